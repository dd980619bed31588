// offerdesk's Freshdesk ticket sidebar (FDK, platform 3.0). It looks up the ticket's latest
// decision on the gateway (request template lookupDecision: Freshworks adds the secure token on
// its servers), shows the offer, and records Accept or Decline (template recordOutcome, with the
// decision's outcome token). It never decides: the automation rule's webhook does, on resolve.
// The card is the gateway's card page's (scripts/card_view.js, from console_adapters/card/, put
// into the package by scripts/pack_freshdesk_app.py); this file is only its transport.
"use strict";

(function () {
  const started = app.initialized().catch((err) => {
    throw new Error("The Freshworks app client did not start: " + err);
  });
  let decision = null; // the decision shown: {decision_id, outcome_token, card, …}
  let agentId = "";

  // A rejected invokeTemplate carries {status, response (text)}; the gateway's refusals are
  // {"error": {"field", "problem"}}, and the platform's own have no such body.
  function problem(err) {
    let body = null;
    try {
      body = JSON.parse((err && err.response) || "null");
    } catch (_) {
      body = null;
    }
    if (body && body.error && body.error.field) return body.error.field + ": " + body.error.problem;
    const code = err && err.status ? " (" + err.status + ")" : "";
    return (err && err.message) || "the gateway could not be reached" + code;
  }

  // The card shows an Error's message; the platform's calls reject with plain objects.
  function failure(err) {
    if (err instanceof Error) return err;
    const phrased = new Error(problem(err));
    phrased.status = err && err.status;
    return phrased;
  }

  const card = window.offerCard({
    load: async () => {
      try {
        const client = await started;
        const [found, user] = await Promise.all([
          client.data.get("ticket"),
          client.data.get("loggedInUser"),
        ]);
        const agent = (user.loggedInUser && user.loggedInUser.id) || found.ticket.responder_id;
        agentId = String(agent || "");
        const reply = await client.request.invokeTemplate("lookupDecision", {
          body: JSON.stringify({ ticket_id: String(found.ticket.id), agent_id: agentId }),
        });
        decision = JSON.parse(reply.response).decision;
        return decision;
      } catch (err) {
        if (err && err.status === 404) return null; // the ticket is not resolved (decided) yet
        throw failure(err);
      }
    },
    record: async (click) => {
      try {
        const client = await started;
        await client.request.invokeTemplate("recordOutcome", {
          body: JSON.stringify({
            decision_id: decision.decision_id,
            outcome_token: decision.outcome_token,
            agent_id: agentId,
            ...click,
          }),
        });
      } catch (err) {
        throw failure(err);
      }
    },
  });

  card.load();
  // Opening the sidebar again, or saving the ticket (resolving it makes the decision), looks
  // again.
  started.then((client) => {
    client.events.on("app.activated", card.load);
    client.events.on("ticket.propertiesUpdated", () => setTimeout(card.load, 1500));
  }, () => {});
})();
