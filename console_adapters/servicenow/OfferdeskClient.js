/*
 * OfferdeskClient: a ServiceNow script include (Application: Global or your scoped app).
 * Sends a resolved incident to the offerdesk gateway, signed as the gateway's ServiceNow
 * adapter checks (console_adapters/servicenow.py):
 *   X-Offerdesk-Timestamp: Unix seconds
 *   X-Offerdesk-Signature: base64(HMAC-SHA256(secret, timestamp + "." + body))
 * System properties:
 *   x_offerdesk.gateway       https://offers.example.com (the gateway, behind TLS)
 *   x_offerdesk.secret        the signing secret (type password2), the same as the gateway's
 * send(incident): the resolved incident → a decision (POST /webhooks/servicenow).
 * recommend(incident): that decision, for a Recommended Actions script resource generator
 * (POST /lookup/servicenow); null when there is none.
 * Install steps: docs/adapters/servicenow.md. Not run against a live instance by our tests:
 * the tests check the gateway against the same signing recipe in Python.
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

    post: function (path, body) {
        var stamp = String(Math.floor(new GlideDateTime().getNumericValue() / 1000));
        var request = new sn_ws.RESTMessageV2();
        request.setEndpoint(this.gateway + path);
        request.setHttpMethod('POST');
        request.setRequestHeader('Content-Type', 'application/json');
        request.setRequestHeader('X-Offerdesk-Timestamp', stamp);
        request.setRequestHeader('X-Offerdesk-Signature', this.sign(stamp, body));
        request.setRequestBody(body);
        request.setHttpTimeout(10000);
        return request.execute();
    },

    // The incident's latest decision (never decides): its card, outcome token and card URL,
    // or null. The agent's Accept/Decline goes to /outcomes with that token.
    recommend: function (incident) {
        var response = this.post('/lookup/servicenow', JSON.stringify({
            ticket_id: incident.getUniqueValue(),
            agent_id: gs.getUserID()
        }));
        if (response.getStatusCode() != 200) {
            return null;
        }
        return JSON.parse(response.getBody()).decision;
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
            var wait = parseInt(response.getHeader('Retry-After'), 10) || 10;
            gs.sleep(Math.min(wait, 30) * 1000);
        }
        gs.error('offerdesk: incident ' + incident.getValue('number') +
            ' not sent after ' + this.attempts + ' attempts');
        return null;
    },

    type: 'OfferdeskClient'
};
