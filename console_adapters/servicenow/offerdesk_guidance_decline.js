/*
 * Flow Designer action "offerdesk: decline the offer", script step. The guidance "Offerdesk
 * offer" runs it from its Decline actions: one secondary action per reason, each giving
 * decline_reason as static text (the agent picks the reason from the card's menu).
 *   Inputs:  decision_id, outcome_token (from the guidance's inputs), decline_reason, one of
 *            not_interested, too_expensive, bad_timing, already_has_it, needs_approval,
 *            customer_upset, other
 *   Outputs: recorded (true/false), message
 * A reason outside that list is refused here, naming the field, before anything is sent.
 * Install steps: docs/adapters/servicenow.md.
 */
(function execute(inputs, outputs) {
    var REASONS = ['not_interested', 'too_expensive', 'bad_timing', 'already_has_it',
        'needs_approval', 'customer_upset', 'other'];
    var reason = String(inputs.decline_reason || '').toLowerCase();
    if (REASONS.indexOf(reason) < 0) {
        throw new Error('offerdesk: decline_reason must be one of ' + REASONS.join(', ') +
            ', got "' + inputs.decline_reason + '"');
    }
    var result = new OfferdeskClient().outcome(inputs.decision_id, inputs.outcome_token,
        'declined', reason);
    outputs.recorded = result.recorded;
    outputs.message = result.recorded ? 'Offer declined (' + reason.replace(/_/g, ' ') + ')' :
        result.problem;
    if (!result.recorded) {
        throw new Error('offerdesk: the decline was not recorded (' + result.status + '): ' +
            result.problem);
    }
})(inputs, outputs);
