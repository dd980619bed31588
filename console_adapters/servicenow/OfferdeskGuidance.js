/*
 * OfferdeskGuidance: a ServiceNow script include (Global) behind the Recommended Actions
 * "Scripting" resource generator: for the incident in context, the offer card the agent sees in
 * the contextual side panel. It never decides: it looks the incident's latest decision up
 * through OfferdeskClient.recommend (POST /lookup/servicenow, signed like the webhook).
 *
 * generate(incident) returns a list of resources, each an object of the guidance's inputs:
 *   one card when the decision is an offer not yet answered, and none otherwise:
 *   - no decision yet (the business rule has not run, or the gateway refused it),
 *   - "no offer" (a guidance card is something to do; a no-offer card on every resolved
 *     incident would teach agents to skip the panel. The agent may still open card_url),
 *   - an offer already accepted or declined (its card moved to the panel's history).
 * The fields are OUTPUTS below; map them to the guidance's inputs of the same names.
 *
 * How the Scripting generator calls a script include is set by ServiceNow's
 * ScriptingGeneratorFactory template, whose method names are not in the public docs: create the
 * generator's script include from that template and have it return
 * new OfferdeskGuidance().generate(<the context record the template hands you>).
 * Install steps: docs/adapters/servicenow.md.
 */
var OfferdeskGuidance = Class.create();
OfferdeskGuidance.prototype = {
    // The generator's outputs (all strings): the guidance "Offerdesk offer" has an input of
    // each name, and the Accept and Decline actions read decision_id and outcome_token.
    OUTPUTS: ['title', 'message', 'offer_name', 'variant', 'price', 'reasons', 'rule',
        'talking_points', 'decision_id', 'outcome_token', 'card_url'],
    // ISO 4217 currencies whose minor unit is not a hundredth (the others have 2 digits)
    DIGITS: {JPY: 0, KRW: 0, VND: 0, CLP: 0, ISK: 0, BHD: 3, KWD: 3, OMR: 3},

    initialize: function (client) {
        this.client = client || new OfferdeskClient();
    },

    generate: function (incident) {
        var card = this.card(this.client.recommend(incident));
        return card ? [card] : [];
    },

    // A decision (the lookup's JSON) → the card's fields, or null when there is nothing to do.
    card: function (decision) {
        if (!decision || decision.kind != 'OFFER' || !decision.card) {
            return null;
        }
        if (decision.outcome && decision.outcome != 'OUTCOME_UNSPECIFIED') {
            return null;
        }
        var card = decision.card;
        var variant = card.variant || {};
        var reasons = [];
        var given = card.reasons || [];
        for (var i = 0; i < given.length && reasons.length < 3; i++) {
            reasons.push(given[i].text);
        }
        var price = this.money(variant.price);
        if (variant.discount_bps && variant.list_price) {
            price += ' (list ' + this.money(variant.list_price) + ', ' +
                (variant.discount_bps / 100) + '% off)';
        }
        var rule = (card.firing_rule && card.firing_rule.description) || '';
        return {
            title: card.offer_name,
            message: (variant.name ? variant.name + ': ' : '') + price,
            offer_name: card.offer_name || '',
            variant: variant.name || '',
            price: price,
            reasons: reasons.join('\n'),
            rule: rule,
            talking_points: (card.talking_points || []).join('\n'),
            decision_id: decision.decision_id,
            outcome_token: decision.outcome_token,
            card_url: decision.card_url ? this.client.gateway + decision.card_url : ''
        };
    },

    // Money {amount_minor, currency} as "24.00 USD" (amount_minor comes as text: an int64).
    money: function (m) {
        if (!m || !m.currency) {
            return '';
        }
        var digits = this.DIGITS.hasOwnProperty(m.currency) ? this.DIGITS[m.currency] : 2;
        var amount = Number(m.amount_minor || 0) / Math.pow(10, digits);
        return amount.toFixed(digits) + ' ' + m.currency;
    },

    type: 'OfferdeskGuidance'
};
