# The platform's data-security rule, evaluated by edgegate for every citizen request.
# Default deny: a request is allowed only by a citizen, over an encrypted connection,
# while the audit sink is accepting records.
package government.digital

import rego.v1

default allow := false

allow if {
	input.action == "service_request"
	input.user.role == "citizen"
	input.data_encrypted == true
	input.audit.enabled == true
}

# Hardened so a missing role cannot slip through: `input.user.role != "citizen"` would be
# undefined, not true, when the role is absent.
deny if not input.user.role == "citizen"
