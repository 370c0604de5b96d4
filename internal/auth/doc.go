// Package auth establishes who is calling taglock and gives taglock its own
// credentials towards the upstream registry.
//
// # Basics
//
// Client authentication, each an implementation of authn.Authenticator:
//   - Htpasswd verifies Basic credentials against a bcrypt htpasswd file that
//     is re-read when it changes, and puts users in the groups the
//     configuration declares;
//   - TokenVerifier verifies bearer JWTs from an external Docker token
//     service (signature, issuer, audience, expiry) and limits each request
//     to the scope the token grants on that exact repository;
//   - ClientCert names the identity after a verified client certificate.
//
// The proxy, not this package, decides what an identity may do; package
// policy holds the rules.
//
// Upstream credentials, each an http.RoundTripper that replaces the client's
// Authorization with taglock's service account: Basic, and BearerToken,
// which performs the Docker token handshake and caches a token per scope. A
// Secret supplies the account: Static, PasswordFile (re-read when the file
// changes, as ECR passwords rotate every 12 hours) or CredentialHelper
// (docker-credential-NAME).
//
// # Caveats
//
// The package makes no access decisions and never logs a password. A
// password that cannot be obtained fails the request; it never falls back to
// forwarding the client's own credentials.
package auth
