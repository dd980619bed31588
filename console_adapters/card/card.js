// The agent's offer card. Reads one decision from the gateway and records the agent's click.
// URL: /card/<decision id>?token=<outcome token>&agent=<agent id>. No build step, no framework.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(window.location.search);
  const decisionId = decodeURIComponent(window.location.pathname.split("/").pop() || "");
  const token = params.get("token") || "";
  const agent = params.get("agent") || "";
  const KINDS = { ADD_ON: "Add-on", UPGRADE: "Upgrade", CROSS_SELL: "Cross-sell" };
  const OUTCOMES = { ACCEPTED: "accepted", DECLINED: "declined", NOT_PRESENTED: "not presented" };

  function show(state) {
    for (const id of ["loading", "offer", "no-offer", "error"]) $(id).hidden = id !== state;
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

  function problem(body, fallback) {
    return body && body.error ? body.error.field + ": " + body.error.problem : fallback;
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
    show("loading");
    status("");
    try {
      const reply = await fetch(
        "/api/decisions/" + encodeURIComponent(decisionId) + "?token=" + encodeURIComponent(token)
      );
      const body = await reply.json().catch(() => null);
      if (!reply.ok) throw new Error(problem(body, "the gateway answered " + reply.status));
      if (body.kind === "OFFER" && body.card) {
        renderOffer(body);
      } else {
        $("agent-message").textContent = reason(body.agent_message || "");
        show("no-offer");
      }
    } catch (err) {
      $("error-message").textContent = String(err.message || err);
      show("error");
      $("retry").focus();
    }
  }

  async function record(outcome, reason, note) {
    const buttons = document.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    status("Recording…");
    try {
      const reply = await fetch("/outcomes", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          decision_id: decisionId,
          outcome_token: token,
          outcome: outcome,
          decline_reason: reason || "",
          decline_note: note || "",
          agent_id: agent,
        }),
      });
      const body = await reply.json().catch(() => null);
      if (!reply.ok) throw new Error(problem(body, "the gateway answered " + reply.status));
      const label = reason ? outcome + " (" + $("decline-reason").selectedOptions[0].text + ")" : outcome;
      recorded(label);
    } catch (err) {
      buttons.forEach((b) => (b.disabled = false));
      status("Not recorded: " + String(err.message || err), "bad");
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
    const reason = $("decline-reason").value;
    if (!reason) {
      status("Choose a reason first.", "bad");
      $("decline-reason").focus();
      return;
    }
    record("declined", reason, $("decline-note").value.trim());
  });
  $("retry").addEventListener("click", load);
  load();
})();
