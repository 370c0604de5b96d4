// Package auth establishes who is calling taglock and gives taglock its own
// credentials towards the upstream registry.
//
// # Basics
//
// Client authentication: Htpasswd verifies Basic credentials against a
// bcrypt htpasswd file that is re-read when it changes, and puts users in the
// groups the configuration declares. Each authenticator implements
// proxy.Authenticator; the proxy, not this package, decides what an identity
// may do (package policy holds the rules).
//
// Upstream credentials: Basic is an http.RoundTripper that replaces the
// client's Authorization with taglock's service account, reading a password
// file again whenever it changes (ECR passwords rotate every 12 hours).
//
// # Caveats
//
// The package makes no access decisions and never logs a password. A
// password file that cannot be read fails the request; it never falls back to
// forwarding the client's own credentials.
package auth
