package auth

import (
	"net/http"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy/authn"
)

// ClientCert gives a request that presented a client certificate, verified
// against tls.client_ca during the handshake, the identity named by the
// certificate's subject common name, in the groups the configuration
// declares for it. Requests without a verified certificate are left to
// Next. The certificate identity wins over credentials in the request.
type ClientCert struct {
	next   authn.Authenticator
	groups map[string][]string // user -> groups
}

var _ authn.Authenticator = (*ClientCert)(nil)

// NewClientCert returns a ClientCert in front of next; groups maps group
// names to members, as auth.groups does.
func NewClientCert(next authn.Authenticator, groups map[string][]string) *ClientCert {
	return &ClientCert{next: next, groups: invert(groups)}
}

// Authenticate implements authn.Authenticator.
func (c *ClientCert) Authenticate(r *http.Request) (authn.Caller, error) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		if cn := r.TLS.VerifiedChains[0][0].Subject.CommonName; cn != "" {
			return authn.Caller{Identity: policy.Identity{User: cn, Groups: c.groups[cn]}}, nil
		}
	}
	return c.next.Authenticate(r)
}

// Challenge implements authn.Authenticator with Next's challenge.
func (c *ClientCert) Challenge(scope string, insufficient bool) string {
	return c.next.Challenge(scope, insufficient)
}
