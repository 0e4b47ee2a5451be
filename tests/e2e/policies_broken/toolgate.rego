# A deliberately broken policy for the fail-closed tests: each test tool gets one failure.
# It answers the load-time probe (request id req_probe) well, as a policy broken only for
# some inputs does: the gateway must still fail closed on those at run time.
package toolgate

import rego.v1

probe if input.request.id == "req_probe"

decision := {"action": "deny", "reasons": ["probe"]} if probe

# Well-formed: the control case.
decision := {"action": "allow", "reasons": ["ok"]} if { not probe; input.tool.name == "echo_item" }

# Malformed output: an action the contract does not have.
decision := {"action": "maybe", "reasons": ["?"]} if { not probe; input.tool.name == "echo_post" }

# Engine error at evaluation time.
decision := {"action": "allow", "reasons": [sprintf("%v", [1 / 0])]} if { not probe; input.tool.name == "echo_status" }

# shadow_tool and down_tool: no rule, so the decision is undefined.
