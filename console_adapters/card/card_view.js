// The agent's offer card, defined once: it renders a decision in card.html's markup and wires
// Accept and Decline. How the decision is read and the click recorded is the transport the page
// passes in: fetch to the gateway on the card page (card.js), request templates in the
// Freshdesk sidebar app (freshdesk_app/app/scripts/app.js). It never talks to a server itself.
"use strict";

// offerCard(transport) shows the card in the page's <main id="card"> and returns {load}.
// transport.load() resolves to the decision (the DecideResponse JSON), or to null when there is
// none yet (the page then has a "not-yet" state); transport.record(click) posts
// {outcome, decline_reason, decline_note} for the decision loaded last. Both reject with an
// Error whose message the agent may read.
window.offerCard = function (transport) {
  const $ = (id) => document.getElementById(id);
  const STATES = Array.from(document.querySelectorAll("#card > .state"), (el) => el.id);
  const KINDS = { ADD_ON: "Add-on", UPGRADE: "Upgrade", CROSS_SELL: "Cross-sell" };
  const OUTCOMES = { ACCEPTED: "accepted", DECLINED: "declined", NOT_PRESENTED: "not presented" };
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

  // The service's agent_message starts "No offer this time: …" or "No offer: …"; under the
  // card's own "No offer this time" heading, the reason alone reads better.
  function reason(message) {
    const rest = message.replace(/^No offer( this time)?:\s*/, "");
    return rest.charAt(0).toUpperCase() + rest.slice(1);
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
    // A sidebar loads again on the same page: a new decision starts with the buttons on.
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
    if (loading) return; // a sidebar's events can ask again while a lookup is under way
    loading = true;
    show("loading");
    status("");
    try {
      const decision = await transport.load();
      if (decision === null) {
        show("not-yet");
      } else if (decision.kind === "OFFER" && decision.card) {
        renderOffer(decision);
      } else {
        $("agent-message").textContent = reason(decision.agent_message || "");
        show("no-offer");
      }
    } catch (err) {
      $("error-message").textContent = String((err && err.message) || err);
      show("error");
      $("retry").focus();
    } finally {
      loading = false;
    }
  }

  async function record(outcome, why, note) {
    const buttons = document.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    status("Recording…");
    try {
      await transport.record({
        outcome: outcome,
        decline_reason: why || "",
        decline_note: note || "",
      });
      recorded(why ? outcome + " (" + $("decline-reason").selectedOptions[0].text + ")" : outcome);
    } catch (err) {
      buttons.forEach((b) => (b.disabled = false));
      status("Not recorded: " + String((err && err.message) || err), "bad");
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

  return { load: load };
};
