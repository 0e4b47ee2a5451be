# A deliberately broken policy for the fail-closed tests: each test tool gets one failure.
package toolgate

import rego.v1

# Well-formed: the control case.
decision := {"action": "allow", "reasons": ["ok"]} if input.tool.name == "echo_item"

# Malformed output: an action the contract does not have.
decision := {"action": "maybe", "reasons": ["?"]} if input.tool.name == "echo_post"

# Engine error at evaluation time.
decision := {"action": "allow", "reasons": [sprintf("%v", [1 / 0])]} if input.tool.name == "echo_status"

# shadow_tool and down_tool: no rule, so the decision is undefined.
