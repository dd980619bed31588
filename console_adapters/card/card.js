// The card page's transport: reads one decision from the gateway and records the agent's click
// (the card itself is card_view.js). URL: /card/<decision id>?token=<outcome token>&agent=<agent
// id>. No build step, no framework.
"use strict";

(function () {
  const params = new URLSearchParams(window.location.search);
  const decisionId = decodeURIComponent(window.location.pathname.split("/").pop() || "");
  const token = params.get("token") || "";
  const agent = params.get("agent") || "";

  // The gateway's refusals are {"error": {"field", "problem"}}.
  async function answer(reply) {
    const body = await reply.json().catch(() => null);
    if (reply.ok) return body;
    if (body && body.error) throw new Error(body.error.field + ": " + body.error.problem);
    throw new Error("the gateway answered " + reply.status);
  }

  const card = window.offerCard({
    load: () =>
      fetch(
        "/api/decisions/" + encodeURIComponent(decisionId) + "?token=" + encodeURIComponent(token)
      ).then(answer),
    record: (click) =>
      fetch("/outcomes", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          decision_id: decisionId,
          outcome_token: token,
          agent_id: agent,
          ...click,
        }),
      }).then(answer),
  });
  card.load();
})();
