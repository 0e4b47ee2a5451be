# Tests for the default Toolgate policy. Run with `opa test policies/` (data.yaml is
# loaded with them) or through the embedded engine.
package toolgate_test

import rego.v1

# ---- Helpers: build an input document the way the gateway does --------------------

principal := {"sub": "svc-agent", "agent": "support-bot", "tenant": "acme", "scopes": ["billing:refund"], "claims": {}}

call(name, tier, args) := {
	"tool": {"name": name, "tier": tier, "scopes": [], "upstream": "billing", "mode": "enforce"},
	"args": args,
	"principal": principal,
	"run": {"id": "run-1", "tool_calls": 3, "spent": {"amount": 120.0}},
	"request": {"id": "req-1", "method": "POST", "path": "/x", "idempotency_key": "k-1", "time": "2025-01-01T00:00:00Z", "source_ip": "10.0.0.1"},
}

refund(amount, currency) := call("create_refund_request", "yellow", {"order_id": "o-1", "amount": amount, "currency": currency, "tenant_id": "acme"})

decide(inp) := d if {
	d := data.toolgate.decision with input as inp
}

codes(d) := {code | some r in d.reasons; code := split(r, ":")[0]}

# ---- Tiers -------------------------------------------------------------------------

test_green_allow if {
	d := decide(call("get_order", "green", {"order_id": "o-1"}))
	d.action == "allow"
	d.reasons == ["green_tier: get_order is a green-tier tool and runs without approval"]
	not d.approvals_required
}

test_red_deny if {
	d := decide(call("change_payroll_bank", "red", {"account": "x"}))
	d.action == "deny"
	d.reasons == ["red_tier: change_payroll_bank is a red-tier tool and is never run by an agent"]
}

test_unknown_tier_deny if {
	d := decide(call("get_order", "purple", {}))
	d.action == "deny"
	codes(d) == {"unknown_tier"}
}

test_missing_tier_deny if {
	inp := json.remove(call("get_order", "green", {}), ["tool/tier"])
	d := decide(inp)
	d.action == "deny"
	codes(d) == {"unknown_tier"}
}

test_empty_input_is_defined_and_denied if {
	decide({}).action == "deny"
}

# ---- Yellow tier: refunds over $200 require approval -------------------------------

test_refund_exactly_200_usd_allowed if {
	d := decide(refund(200, "USD"))
	d.action == "allow"
	d.reasons == ["within_limit: amount 200 USD is within the 200 USD limit for create_refund_request"]
}

test_refund_200_01_usd_held_with_approval_fields if {
	d := decide(refund(200.01, "USD"))
	d.action == "require_approval"
	d.reasons == ["over_limit: amount 200.01 USD is over the 200 USD limit for create_refund_request"]
	d.approvals_required == 1
	d.approver_roles == ["billing-approver"]
	d.ttl_seconds == 3600
}

test_refund_250_eur_held if {
	d := decide(refund(250, "EUR"))
	d.action == "require_approval"
	d.reasons == ["over_limit: amount 250 EUR is over the 180 EUR limit for create_refund_request"]
}

test_refund_180_eur_allowed if {
	decide(refund(180, "EUR")).action == "allow"
}

test_unlisted_currency_held if {
	d := decide(refund(5, "JPY"))
	d.action == "require_approval"
	d.reasons == ["unlisted_currency: create_refund_request has no limit for currency 'JPY'"]
}

test_missing_currency_held if {
	inp := json.remove(refund(10, "USD"), ["args/currency"])
	d := decide(inp)
	d.action == "require_approval"
	d.reasons == ["invalid_argument: currency must be a currency code to check the limit for create_refund_request"]
}

test_missing_amount_held if {
	inp := json.remove(refund(10, "USD"), ["args/amount"])
	d := decide(inp)
	d.action == "require_approval"
	codes(d) == {"invalid_argument"}
}

test_string_amount_held if {
	d := decide(refund("10", "USD"))
	d.action == "require_approval"
	codes(d) == {"invalid_argument"}
}

test_yellow_without_limit_held_with_defaults if {
	d := decide(call("send_customer_email", "yellow", {"to": "a@example.com"}))
	d.action == "require_approval"
	codes(d) == {"no_limit"}
	d.approvals_required == 1
	not d.ttl_seconds
}

test_limits_come_from_data if {
	lims := {"send_sms": {"argument": "count", "max": 10, "approvals_required": 2, "approver_roles": ["ops"]}}
	ok := decide(call("send_sms", "yellow", {"count": 10})) with data.toolgate.limits as lims
	ok.action == "allow"
	held := decide(call("send_sms", "yellow", {"count": 11})) with data.toolgate.limits as lims
	held.action == "require_approval"
	held.reasons == ["over_limit: count 11 is over the 10 limit for send_sms"]
	held.approvals_required == 2
	held.approver_roles == ["ops"]
}

test_malformed_limit_held if {
	d := decide(refund(10, "USD")) with data.toolgate.limits as {"create_refund_request": {"argument": "amount", "max": "lots"}}
	d.action == "require_approval"
	codes(d) == {"limit_unchecked"}
}

# ---- Tenant scoping ----------------------------------------------------------------

test_tenant_mismatch_denied if {
	d := decide(call("get_order", "green", {"order_id": "o-1", "tenant_id": "globex"}))
	d.action == "deny"
	d.reasons == ["tenant_mismatch: argument tenant_id 'globex' is not the caller's tenant 'acme'"]
}

test_matching_tenant_allowed if {
	decide(call("get_order", "green", {"tenant_id": "acme"})).action == "allow"
}

test_wrong_tenant_beats_over_limit if {
	inp := json.patch(refund(500, "USD"), [{"op": "replace", "path": "/args/tenant_id", "value": "globex"}])
	d := decide(inp)
	d.action == "deny"
	codes(d) == {"tenant_mismatch"}
	not d.approvals_required
}

test_red_with_wrong_tenant_has_both_reasons if {
	d := decide(call("change_payroll_bank", "red", {"tenant_id": "globex"}))
	d.action == "deny"
	codes(d) == {"red_tier", "tenant_mismatch"}
}

test_missing_principal_tenant_denied if {
	inp := json.remove(call("get_order", "green", {"tenant_id": "acme"}), ["principal/tenant"])
	d := decide(inp)
	d.action == "deny"
	codes(d) == {"tenant_missing"}
}

test_empty_principal_tenant_denied if {
	inp := json.patch(call("get_order", "green", {"tenant_id": ""}), [{"op": "replace", "path": "/principal/tenant", "value": ""}])
	decide(inp).action == "deny"
}

test_tool_without_tenant_arg_not_constrained if {
	inp := json.remove(call("get_order", "green", {"order_id": "o-1"}), ["principal/tenant"])
	decide(inp).action == "allow"
}

test_tenant_argument_name_from_data if {
	inp := call("get_order", "green", {"org": "globex", "tenant_id": "globex"})
	d := decide(inp) with data.toolgate.tenant_argument as "org"
	d.reasons == ["tenant_mismatch: argument org 'globex' is not the caller's tenant 'acme'"]
}

# ---- Reasons -------------------------------------------------------------------------

test_reasons_sorted_and_coded if {
	inp := json.remove(call("change_payroll_bank", "red", {"tenant_id": "globex"}), ["principal/tenant"])
	d := decide(inp)
	d.reasons == sort(d.reasons)
	count(d.reasons) == 2
	every r in d.reasons {
		regex.match(`^[a-z][a-z0-9_]*: .+`, r)
	}
}

# ---- Autonomy ramp -----------------------------------------------------------------

in_bucket(inp, b) := object.union(inp, {"request": object.union(inp.request, {"bucket": b})})

test_ramp_zero_holds_every_over_limit_call if {
	d := data.toolgate.decision with input as in_bucket(refund(250, "USD"), 0) with data.toolgate.limits.create_refund_request.auto_percent as 0
	d.action == "require_approval"
	codes(d) == {"over_limit"}
}

test_ramp_runs_the_calls_below_its_share if {
	below := data.toolgate.decision with input as in_bucket(refund(250, "USD"), 19) with data.toolgate.limits.create_refund_request.auto_percent as 20
	below.action == "allow"
	codes(below) == {"autonomy_ramp"}
	at := data.toolgate.decision with input as in_bucket(refund(250, "USD"), 20) with data.toolgate.limits.create_refund_request.auto_percent as 20
	at.action == "require_approval"
}

test_ramp_never_runs_a_call_it_could_not_check if {
	d := data.toolgate.decision with input as in_bucket(refund(250, "XXX"), 0) with data.toolgate.limits.create_refund_request.auto_percent as 100
	d.action == "require_approval"
	codes(d) == {"unlisted_currency"}
}

test_ramp_keeps_denials if {
	other := object.union(refund(250, "USD"), {"args": object.union(refund(250, "USD").args, {"tenant_id": "globex"})})
	d := data.toolgate.decision with input as in_bucket(other, 0) with data.toolgate.limits.create_refund_request.auto_percent as 100
	d.action == "deny"
}
