/*
 * Flow Designer action "offerdesk: accept the offer", script step. The guidance "Offerdesk
 * offer" runs it (Guidance Action Automation) when the agent clicks Accept.
 *   Inputs:  decision_id, outcome_token (strings, from the guidance's inputs)
 *   Outputs: recorded (true/false), message
 * A refusal (a wrong token, the gateway down, or another outcome already recorded) throws, so
 * the action ends in error and the card says so; nothing is recorded twice.
 * Install steps: docs/adapters/servicenow.md.
 */
(function execute(inputs, outputs) {
    var result = new OfferdeskClient().outcome(inputs.decision_id, inputs.outcome_token,
        'accepted', '');
    outputs.recorded = result.recorded;
    outputs.message = result.recorded ? 'Offer accepted' : result.problem;
    if (!result.recorded) {
        throw new Error('offerdesk: the accept was not recorded (' + result.status + '): ' +
            result.problem);
    }
})(inputs, outputs);
