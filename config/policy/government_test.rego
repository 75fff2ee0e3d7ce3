# Tests for the shipped policy: `edgegate policy test config/policy`.
package government.digital

import rego.v1

citizen_request := {
	"action": "service_request",
	"user": {"id": "c-1", "role": "citizen"},
	"data_encrypted": true,
	"audit": {"enabled": true},
}

test_citizen_allowed if {
	allow with input as citizen_request
	not deny with input as citizen_request
}

# object.union merges recursively, so the user object is replaced, not merged.
no_role_request := object.union(object.remove(citizen_request, ["user"]), {"user": {"id": "c-1"}})

test_missing_role_denied if {
	not allow with input as no_role_request
	deny with input as no_role_request
}

test_no_user_denied if {
	not allow with input as object.remove(citizen_request, ["user"])
}

test_admin_role_denied if {
	not allow with input as object.union(citizen_request, {"user": {"id": "a-1", "role": "admin"}})
}

test_official_role_denied if {
	not allow with input as object.union(citizen_request, {"user": {"id": "o-1", "role": "official"}})
}

test_unencrypted_denied if {
	not allow with input as object.union(citizen_request, {"data_encrypted": false})
}

test_audit_off_denied if {
	not allow with input as object.union(citizen_request, {"audit": {"enabled": false}})
}

test_other_action_denied if {
	not allow with input as object.union(citizen_request, {"action": "bulk_export"})
}
