/*
 * OfferdeskClient: a ServiceNow script include (Application: Global; it waits between retries
 * with gs.sleep, which scoped apps cannot call).
 * Sends a resolved incident to the offerdesk gateway, signed as the gateway's ServiceNow
 * adapter checks (console_adapters/servicenow.py):
 *   X-Offerdesk-Timestamp: Unix seconds
 *   X-Offerdesk-Signature: base64(HMAC-SHA256(secret, timestamp + "." + body))
 * System properties (servicenow/offerdesk_properties.xml):
 *   x_offerdesk.gateway       https://offers.example.com (the gateway, behind TLS)
 *   x_offerdesk.secret        the signing secret (type password2), the same as the gateway's
 * send(incident): the resolved incident → a decision (POST /webhooks/servicenow).
 * recommend(incident): that decision, for the Recommended Actions generator
 * (OfferdeskGuidance, POST /lookup/servicenow, signed); null when there is none.
 * outcome(decisionId, token, outcome, reason): the agent's Accept or Decline (POST /outcomes,
 * proven by the decision's outcome token).
 * Install steps: docs/adapters/servicenow.md. tests/test_servicenow_app.py runs this file under
 * node against a real gateway, with a shim standing in for the ServiceNow globals.
 */
var OfferdeskClient = Class.create();
OfferdeskClient.prototype = {
    initialize: function () {
        this.gateway = gs.getProperty('x_offerdesk.gateway');
        this.secret = gs.getProperty('x_offerdesk.secret');
        this.attempts = 3;
    },

    // The trigger body of docs/adapters/README.md: the same keys for every helpdesk.
    body: function (incident) {
        // sys_updated_on is stored in UTC as "yyyy-MM-dd HH:mm:ss".
        var updated = incident.getValue('sys_updated_on').replace(' ', 'T') + 'Z';
        return JSON.stringify({
            ticket_id: incident.getUniqueValue(),
            status: incident.getValue('state'),
            updated_at: updated,
            requester_id: incident.getValue('caller_id'),
            assignee_id: incident.getValue('assigned_to'),
            via: incident.getValue('contact_type') || '',
            category: incident.getValue('category') || '',
            product_area: incident.getValue('subcategory') || '',
            reopens: incident.getValue('reopen_count') || '0'
        });
    },

    sign: function (stamp, body) {
        // generateMac takes the key base64-encoded and returns the MAC base64-encoded.
        return new GlideCertificateEncryption().generateMac(
            GlideStringUtil.base64Encode(this.secret), 'HmacSHA256', stamp + '.' + body);
    },

    // POST a JSON body; signed unless the body carries its own proof (an outcome token).
    post: function (path, body, signed) {
        var request = new sn_ws.RESTMessageV2();
        request.setEndpoint(this.gateway + path);
        request.setHttpMethod('POST');
        request.setRequestHeader('Content-Type', 'application/json');
        if (signed !== false) {
            var stamp = String(Math.floor(new GlideDateTime().getNumericValue() / 1000));
            request.setRequestHeader('X-Offerdesk-Timestamp', stamp);
            request.setRequestHeader('X-Offerdesk-Signature', this.sign(stamp, body));
        }
        request.setRequestBody(body);
        request.setHttpTimeout(10000);
        return request.execute();
    },

    // The incident's latest decision (never decides): its card, outcome token and card URL,
    // or null (none yet: 404). Any other refusal is logged, so a wrong secret shows in the log.
    recommend: function (incident) {
        var response = this.post('/lookup/servicenow', JSON.stringify({
            ticket_id: incident.getUniqueValue(),
            agent_id: gs.getUserID()
        }));
        var status = response.getStatusCode();
        if (status == 200) {
            return JSON.parse(response.getBody()).decision;
        }
        if (status != 404) {
            gs.error('offerdesk: lookup of incident ' + incident.getValue('number') +
                ' refused (' + status + '): ' + response.getBody());
        }
        return null;
    },

    // Record the agent's click. outcome: accepted, declined or not_presented; reason: required
    // for declined (not_interested, too_expensive, bad_timing, already_has_it, needs_approval,
    // customer_upset, other). Returns {recorded, status, problem}; the gateway answers 409 to a
    // different outcome for a decision already recorded, and repeats the first answer to the same.
    outcome: function (decisionId, token, outcome, reason) {
        var response = this.post('/outcomes', JSON.stringify({
            decision_id: decisionId,
            outcome_token: token,
            outcome: outcome,
            decline_reason: reason || '',
            agent_id: gs.getUserID()
        }), false);
        var status = response.getStatusCode();
        if (status == 200) {
            return {recorded: true, status: status, problem: ''};
        }
        var problem = response.getBody();
        try {
            var error = JSON.parse(problem).error;
            problem = error.field + ': ' + error.problem;
        } catch (e) {
            // not the gateway's JSON error (a proxy's page, or no answer): keep it as it is
        }
        gs.error('offerdesk: ' + outcome + ' of decision ' + decisionId + ' refused (' + status +
            '): ' + problem);
        return {recorded: false, status: status, problem: problem};
    },

    // Send the incident; retry 429 and 5xx (the decision was not recorded) with the same
    // body, which maps to the same request key, so a retry never makes a second decision.
    send: function (incident) {
        var body = this.body(incident);
        for (var attempt = 1; attempt <= this.attempts; attempt++) {
            var response = this.post('/webhooks/servicenow', body);
            var status = response.getStatusCode();
            if (status >= 200 && status < 300) {
                return JSON.parse(response.getBody());
            }
            if (status != 429 && status < 500 && status != 0) {
                gs.error('offerdesk: incident ' + incident.getValue('number') + ' refused (' +
                    status + '): ' + response.getBody());
                return null;
            }
            if (attempt < this.attempts) {
                var wait = parseInt(response.getHeader('Retry-After'), 10) || 10;
                gs.sleep(Math.min(wait, 30) * 1000);
            }
        }
        gs.error('offerdesk: incident ' + incident.getValue('number') +
            ' not sent after ' + this.attempts + ' attempts');
        return null;
    },

    type: 'OfferdeskClient'
};
