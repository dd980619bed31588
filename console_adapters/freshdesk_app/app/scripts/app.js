// offerdesk's Freshdesk ticket sidebar (FDK, platform 3.0). It looks up the ticket's latest
// decision on the gateway (request template lookupDecision: Freshworks adds the secure token on
// its servers), shows the offer, and records Accept or Decline (template recordOutcome, with the
// decision's outcome token). It never decides: the automation rule's webhook does, on resolve.
// The card is the same as the gateway's card page (console_adapters/card/card.js).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const STATES = ["loading", "offer", "no-offer", "not-yet", "error"];
  const KINDS = { ADD_ON: "Add-on", UPGRADE: "Upgrade", CROSS_SELL: "Cross-sell" };
  const OUTCOMES = { ACCEPTED: "accepted", DECLINED: "declined", NOT_PRESENTED: "not presented" };
  let client = null;
  let decision = null; // the decision shown: {decision_id, outcome_token, card, …}
  let agentId = "";
  let loading = false;

  function show(state) {
    for (const id of STATES) $(id).hidden = id !== state;
    $("card").setAttribute("aria-busy", state === "loading" ? "true" : "false");
  }

  function status(text, tone) {
    const el = $("status");
    el.textContent = text;
    el.className = "status" + (tone ? " " + tone : "");
  }

  function money(m) {
    if (!m || !m.currency) return "";
    const format = new Intl.NumberFormat(navigator.language || "en-US", {
      style: "currency",
      currency: m.currency,
    });
    const digits = format.resolvedOptions().maximumFractionDigits;
    return format.format(Number(m.amount_minor || 0) / Math.pow(10, digits));
  }

  function list(el, items) {
    el.replaceChildren(
      ...items.map((text) => {
        const li = document.createElement("li");
        li.textContent = text;
        return li;
      })
    );
  }

  // "No offer this time: …" → the reason alone, under the card's own heading.
  function reason(message) {
    const rest = message.replace(/^No offer( this time)?:\s*/, "");
    return rest.charAt(0).toUpperCase() + rest.slice(1);
  }

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

  function renderOffer(d) {
    const card = d.card;
    const variant = card.variant || {};
    $("offer-kind").textContent = KINDS[card.offer_kind] || "";
    $("offer-name").textContent = card.offer_name;
    $("variant-name").textContent = variant.name || "";
    $("price").textContent = money(variant.price);
    const discounted = Number(variant.discount_bps || 0) > 0;
    $("list-price").hidden = !discounted;
    $("discount").hidden = !discounted;
    if (discounted) {
      $("list-price").textContent = money(variant.list_price);
      $("discount").textContent = Math.round(Number(variant.discount_bps) / 100) + "% off";
    }
    list($("talking-points"), card.talking_points || []);
    const reasons = (card.reasons || []).slice(0, 3).map((r) => r.text);
    list($("reasons"), reasons);
    $("no-reasons").hidden = reasons.length > 0;
    const rule = card.firing_rule || {};
    $("rule").textContent = rule.description || rule.id || "";
    $("rule").title = rule.expression || "";
    $("accept").disabled = false;
    $("decline").disabled = false;
    $("decline-form").hidden = true;
    show("offer");
    if (d.outcome && OUTCOMES[d.outcome]) recorded(OUTCOMES[d.outcome]);
  }

  function recorded(what) {
    $("accept").disabled = true;
    $("decline").disabled = true;
    $("decline-form").hidden = true;
    status("Recorded: " + what + ".", "ok");
  }

  async function load() {
    if (loading) return;
    loading = true;
    show("loading");
    status("");
    try {
      const [found, user] = await Promise.all([
        client.data.get("ticket"),
        client.data.get("loggedInUser"),
      ]);
      agentId = String((user.loggedInUser && user.loggedInUser.id) || found.ticket.responder_id || "");
      const reply = await client.request.invokeTemplate("lookupDecision", {
        body: JSON.stringify({ ticket_id: String(found.ticket.id), agent_id: agentId }),
      });
      decision = JSON.parse(reply.response).decision;
      if (decision.kind === "OFFER" && decision.card) {
        renderOffer(decision);
      } else {
        $("agent-message").textContent = reason(decision.agent_message || "");
        show("no-offer");
      }
    } catch (err) {
      if (err && err.status === 404) {
        show("not-yet"); // the ticket has not been resolved (decided) yet
      } else {
        $("error-message").textContent = problem(err);
        show("error");
        $("retry").focus();
      }
    } finally {
      loading = false;
    }
  }

  async function record(outcome, why, note) {
    const buttons = document.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    status("Recording…");
    try {
      await client.request.invokeTemplate("recordOutcome", {
        body: JSON.stringify({
          decision_id: decision.decision_id,
          outcome_token: decision.outcome_token,
          outcome: outcome,
          decline_reason: why || "",
          decline_note: note || "",
          agent_id: agentId,
        }),
      });
      const label = why ? outcome + " (" + $("decline-reason").selectedOptions[0].text + ")" : outcome;
      recorded(label);
    } catch (err) {
      buttons.forEach((b) => (b.disabled = false));
      status("Not recorded: " + problem(err), "bad");
    }
  }

  $("accept").addEventListener("click", () => record("accepted"));
  $("decline").addEventListener("click", () => {
    $("decline-form").hidden = false;
    $("decline-reason").focus();
  });
  $("decline-cancel").addEventListener("click", () => {
    $("decline-form").hidden = true;
    $("decline").focus();
  });
  $("decline-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const why = $("decline-reason").value;
    if (!why) {
      status("Choose a reason first.", "bad");
      $("decline-reason").focus();
      return;
    }
    record("declined", why, $("decline-note").value.trim());
  });
  $("retry").addEventListener("click", load);

  app.initialized().then(
    (initialized) => {
      client = initialized;
      load();
      // Opening the sidebar again, or saving the ticket (resolving it makes the decision),
      // looks again.
      client.events.on("app.activated", load);
      client.events.on("ticket.propertiesUpdated", () => setTimeout(load, 1500));
    },
    (err) => {
      $("error-message").textContent = "The Freshworks app client did not start: " + err;
      show("error");
    }
  );
})();
