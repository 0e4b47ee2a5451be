# Toolgate default policy: tiered autonomy + tenant scoping.
#
# The gateway queries data.toolgate.decision. Numbers (limits, approvers) live in
# policies/data.yaml under `toolgate:` so they change without touching this file.
# Every reason is "<snake_case_code>: <sentence>"; reasons are sorted for determinism.
package toolgate

import rego.v1

# ---- Decision: deny beats require_approval beats allow ----------------------------

# Fail closed: if no rule below produces a decision, the call is denied.
default decision := {"action": "deny", "reasons": ["no_decision: the policy found no rule that allows this call"]}

decision := {"action": "deny", "reasons": sort(deny_reasons)} if count(deny_reasons) > 0

decision := object.union(approval_settings, {"action": "require_approval", "reasons": sort(approval_reasons)}) if {
	count(deny_reasons) == 0
	count(approval_reasons) > 0
}

# Allow needs a positive reason (green tier or within limit), never just "nothing objected".
decision := {"action": "allow", "reasons": sort(allow_reasons)} if {
	count(deny_reasons) == 0
	count(approval_reasons) == 0
	count(allow_reasons) > 0
}

# ---- Helpers -----------------------------------------------------------------------

tool_name := input.tool.name if is_string(input.tool.name)

# Argument that carries the tenant: data.toolgate.tenant_argument, else "tenant_id".
default tenant_arg := "tenant_id"

tenant_arg := data.toolgate.tenant_argument if is_string(data.toolgate.tenant_argument)

# The caller's tenant from its credential; an absent or empty tenant counts as none.
caller_tenant := input.principal.tenant if {
	is_string(input.principal.tenant)
	input.principal.tenant != ""
}

# This tool's entry in data.toolgate.limits, the checked argument and its currency.
limit := data.toolgate.limits[tool_name]

amount := input.args[limit.argument]

currency := input.args[limit.currency_argument]

# The cap: `max` is either one number, or a map of currency code -> number.
cap := limit.max if is_number(limit.max)

cap := limit.max[currency] if is_object(limit.max)

# " USD" after amounts when the cap is per currency, nothing otherwise.
default unit := ""

unit := concat("", [" ", currency]) if is_object(limit.max)

within_limit if {
	is_number(amount)
	is_number(cap)
	amount <= cap # the cap itself is allowed: "over $200" means > 200
}

# Settings for a held call, from the tool's limit entry; one approver by default.
default approval_settings := {"approvals_required": 1}

approval_settings := object.union({"approvals_required": 1}, object.filter(limit, {"approvals_required", "approver_roles", "ttl_seconds"}))

# ---- Deny: red tier, unknown tier, tenant scoping ----------------------------------

deny_reasons contains sprintf("red_tier: %s is a red-tier tool and is never run by an agent", [tool_name]) if input.tool.tier == "red"

# `not` is only ever applied to a rule, never to a builtin or `in` whose operand may be
# undefined: OPA finds `not is_number(<undefined>)` undefined, regorus finds it true.
# Through a helper rule both engines give the same answer (tests/policy/test_differential.py).
known_tier if input.tool.tier in {"green", "yellow", "red"}

deny_reasons contains sprintf("unknown_tier: %s has no known autonomy tier (green, yellow or red)", [tool_name]) if {
	not known_tier
}

# A tenant argument must name the caller's own tenant; tools without one are not constrained.
deny_reasons contains sprintf("tenant_mismatch: argument %s '%v' is not the caller's tenant '%s'", [tenant_arg, arg, caller_tenant]) if {
	arg := input.args[tenant_arg]
	arg != caller_tenant
}

deny_reasons contains sprintf("tenant_missing: argument %s is set but the caller's credential has no tenant", [tenant_arg]) if {
	_ = input.args[tenant_arg]
	not caller_tenant
}

# ---- Require approval: yellow tier unless positively within its limit --------------

approval_reasons contains sprintf("no_limit: %s is a yellow-tier tool with no limit configured, so each call needs approval", [tool_name]) if {
	input.tool.tier == "yellow"
	not limit
}

approval_reasons contains reason if {
	input.tool.tier == "yellow"
	not ramped
	some reason in limit_holds
}

# Catch-all: a limit is configured but the call could not be checked (malformed entry).
approval_reasons contains sprintf("limit_unchecked: the call could not be checked against the limit for %s", [tool_name]) if {
	input.tool.tier == "yellow"
	limit
	not within_limit
	count(limit_holds) == 0
}

amount_is_number if is_number(amount)

currency_is_code if is_string(currency)

limit_holds contains sprintf("invalid_argument: %s must be a number to check the limit for %s", [limit.argument, tool_name]) if {
	not amount_is_number
}

limit_holds contains sprintf("invalid_argument: %s must be a currency code to check the limit for %s", [limit.currency_argument, tool_name]) if {
	is_object(limit.max)
	not currency_is_code
}

limit_holds contains sprintf("unlisted_currency: %s has no limit for currency '%s'", [tool_name, currency]) if {
	is_string(currency)
	not limit.max[currency]
}

limit_holds contains sprintf("over_limit: %s %v%s is over the %v%s limit for %s", [limit.argument, amount, unit, cap, unit, tool_name]) if {
	is_number(amount)
	is_number(cap)
	amount > cap
}

# ---- Autonomy ramp: a share of over-limit calls runs without approval ---------------
# data.toolgate.limits[tool].auto_percent (0-100, default 0): an over-limit call whose
# input.request.bucket (0-99, fixed by the call) is below it runs without approval. Only
# a plain over_limit is ramped: a missing amount or an unlisted currency is still held.

ramped if {
	input.tool.tier == "yellow"
	is_number(limit.auto_percent)
	is_number(input.request.bucket)
	input.request.bucket < limit.auto_percent
	is_number(amount)
	is_number(cap)
	amount > cap
}

# ---- Allow: green tier, or yellow within its limit ---------------------------------

allow_reasons contains sprintf("green_tier: %s is a green-tier tool and runs without approval", [tool_name]) if input.tool.tier == "green"

allow_reasons contains sprintf("within_limit: %s %v%s is within the %v%s limit for %s", [limit.argument, amount, unit, cap, unit, tool_name]) if {
	input.tool.tier == "yellow"
	within_limit
}

allow_reasons contains sprintf("autonomy_ramp: %s %v%s is over the %v%s limit for %s, and runs without approval (bucket %v of the %v%% ramped)", [limit.argument, amount, unit, cap, unit, tool_name, input.request.bucket, limit.auto_percent]) if ramped
