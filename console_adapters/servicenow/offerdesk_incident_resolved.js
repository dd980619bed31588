/*
 * Business rule "offerdesk: incident resolved"
 *   Table: Incident [incident]   When: async   Update: checked
 *   Condition: current.state.changesTo(6)   (6 = Resolved; check sys_choice on your instance)
 * Async, so the agent's save never waits for the gateway. Install steps:
 * docs/adapters/servicenow.md.
 */
(function executeRule(current, previous /*null when async*/) {
    new OfferdeskClient().send(current);
})(current, previous);
