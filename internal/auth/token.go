package auth

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"

	"github.com/distribution/distribution/v3/registry/auth/token"
	"github.com/go-jose/go-jose/v4"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy/authn"
)

// signingAlgorithms are the asymmetric algorithms a token may be signed
// with. HMAC is left out: a public key must never double as a shared secret.
var signingAlgorithms = []jose.SignatureAlgorithm{
	jose.EdDSA, jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512, jose.PS256, jose.PS384, jose.PS512,
}

// TokenOptions configure a TokenVerifier; they mirror auth.token in the
// configuration. Exactly one of JWKS and RootCertBundle is needed.
type TokenOptions struct {
	// Realm is the token service's URL clients are sent to.
	Realm string
	// Service is the audience tokens must name.
	Service string
	// Issuer is the issuer tokens must name.
	Issuer string
	// JWKS is a file holding the issuer's JSON Web Key Set.
	JWKS string
	// RootCertBundle is a PEM file of certificates that sign token
	// signing certificates (x5c), as Harbor and Distribution use.
	RootCertBundle string
}

// TokenVerifier authenticates bearer tokens issued by an external Docker
// token service (Harbor's, or any issuer of the Docker token
// specification). It checks signature, issuer, audience, expiry and, for
// every request, that the token grants the action on the exact canonical
// repository; a token for one repository never authorises another.
type TokenVerifier struct {
	realm, service string
	opts           token.VerifyOptions
	groups         map[string][]string // user -> groups
}

var _ authn.Authenticator = (*TokenVerifier)(nil)

// NewTokenVerifier loads the issuer's keys and returns a TokenVerifier.
// groups maps group names to members, as auth.groups does.
func NewTokenVerifier(o TokenOptions, groups map[string][]string) (*TokenVerifier, error) {
	v := &TokenVerifier{realm: o.Realm, service: o.Service, groups: invert(groups), opts: token.VerifyOptions{
		TrustedIssuers: []string{o.Issuer}, AcceptedAudiences: []string{o.Service},
		Roots: x509.NewCertPool(), TrustedKeys: map[string]crypto.PublicKey{},
	}}
	switch {
	case o.JWKS != "":
		b, err := os.ReadFile(o.JWKS)
		if err != nil {
			return nil, fmt.Errorf("jwks: %w", err)
		}
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(b, &set); err != nil {
			return nil, fmt.Errorf("jwks %s: %w", o.JWKS, err)
		}
		for _, k := range set.Keys {
			if k.IsPublic() || k.Valid() {
				v.opts.TrustedKeys[k.KeyID] = k.Public()
			}
		}
		if len(v.opts.TrustedKeys) == 0 {
			return nil, fmt.Errorf("jwks %s: no keys", o.JWKS)
		}
	case o.RootCertBundle != "":
		b, err := os.ReadFile(o.RootCertBundle)
		if err != nil {
			return nil, fmt.Errorf("rootcertbundle: %w", err)
		}
		n := 0
		for block, rest := pem.Decode(b); block != nil; block, rest = pem.Decode(rest) {
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("rootcertbundle %s: %w", o.RootCertBundle, err)
			}
			v.opts.Roots.AddCert(c)
			if kid := token.GetJWKThumbprint(c.PublicKey); kid != "" {
				v.opts.TrustedKeys[kid] = c.PublicKey
			}
			n++
		}
		if n == 0 {
			return nil, fmt.Errorf("rootcertbundle %s: no certificates", o.RootCertBundle)
		}
	default:
		return nil, fmt.Errorf("token auth needs jwks or rootcertbundle")
	}
	return v, nil
}

func invert(groups map[string][]string) map[string][]string {
	out := map[string][]string{}
	for g, users := range groups {
		for _, u := range users {
			out[u] = append(out[u], g)
		}
	}
	for _, gs := range out {
		slices.Sort(gs)
	}
	return out
}

// denyAll is the scope of a request without a token: it may do nothing
// until it fetches one.
func denyAll(string, policy.Action) bool { return false }

// Authenticate implements authn.Authenticator. A request without a bearer
// token gets a Caller whose scope allows nothing, so it is challenged and
// sent to the token service; an anonymous token (no subject) is an
// anonymous Caller limited to the token's scope.
func (v *TokenVerifier) Authenticate(r *http.Request) (authn.Caller, error) {
	authz := r.Header.Get("Authorization")
	if authz == "" {
		return authn.Caller{Scope: denyAll}, nil
	}
	scheme, raw, ok := strings.Cut(authz, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || raw == "" {
		return authn.Caller{}, fmt.Errorf("%w: want a bearer token", ErrBadCredentials)
	}
	t, err := token.NewToken(raw, signingAlgorithms)
	if err != nil {
		return authn.Caller{}, fmt.Errorf("%w: %v", ErrBadCredentials, err)
	}
	claims, err := t.Verify(v.opts)
	if err != nil {
		return authn.Caller{}, fmt.Errorf("%w: token: %v", ErrBadCredentials, err)
	}
	grants := claims.Access
	scope := func(repo string, a policy.Action) bool {
		typ, name := "repository", repo
		if repo == "" {
			typ, name = "registry", "catalog"
		}
		for _, g := range grants {
			if g != nil && g.Type == typ && g.Name == name &&
				(slices.Contains(g.Actions, string(a)) || slices.Contains(g.Actions, "*")) {
				return true
			}
		}
		return false
	}
	return authn.Caller{Identity: policy.Identity{User: claims.Subject, Groups: v.groups[claims.Subject]}, Scope: scope}, nil
}

// Challenge implements authn.Authenticator: a Bearer challenge sending the
// client to the token service for scope.
func (v *TokenVerifier) Challenge(scope string, insufficient bool) string {
	c := fmt.Sprintf("Bearer realm=%q,service=%q", v.realm, v.service)
	if scope != "" {
		c += fmt.Sprintf(",scope=%q", scope)
	}
	if insufficient {
		c += `,error="insufficient_scope"`
	}
	return c
}
