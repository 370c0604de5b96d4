// Package authn is the contract between the registry handler and whatever
// establishes who makes a request: an Authenticator returns the verified
// Caller. The handler (package proxy) uses it and internal/auth implements
// it, and neither imports the other.
package authn

import (
	"net/http"

	"github.com/taglock/taglock/policy"
)

// Caller is who makes a request, as an Authenticator established it.
type Caller struct {
	// Identity is the verified user and its groups; the zero Identity is
	// anonymous.
	Identity policy.Identity
	// Scope, when not nil, limits what the credentials themselves may do,
	// whatever the access rules say: a bearer token's granted actions on
	// one repository (repo "" asks about the catalog). nil leaves the
	// decision to the access rules alone.
	Scope func(repo string, a policy.Action) bool
}

// Authenticator establishes who makes a request.
type Authenticator interface {
	// Authenticate returns the verified caller: the zero Caller when the
	// request carries no credentials, an error when it carries credentials
	// that do not verify.
	Authenticate(r *http.Request) (Caller, error)
	// Challenge is the WWW-Authenticate value for a 401 answer. scope is
	// the Docker token scope the request needs, such as
	// "repository:NAME:pull,push" or "registry:catalog:*" ("" for the
	// ping); insufficient is true when the request carried valid
	// credentials whose scope did not cover it.
	Challenge(scope string, insufficient bool) string
}
