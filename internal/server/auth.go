package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/auth"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/internal/web"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy"
)

// clientAuth builds the authenticator and access rules the auth and access
// sections describe; a nil Authenticator means authentication is off.
func clientAuth(cfg config.Config, log zerolog.Logger) (proxy.Authenticator, policy.Access, error) {
	a, access, err := credentialAuth(cfg, log)
	if err != nil || a == nil || cfg.TLS.ClientCA == "" {
		return a, access, err
	}
	log.Info().Str("client_ca", cfg.TLS.ClientCA).Msg("client certificates verified against client_ca name identities (subject common name)")
	return auth.NewClientCert(a, cfg.Auth.Groups), access, nil
}

// credentialAuth is the authenticator for credentials sent in requests.
func credentialAuth(cfg config.Config, log zerolog.Logger) (proxy.Authenticator, policy.Access, error) {
	access, err := cfg.AccessPolicy()
	if err != nil {
		return nil, policy.Access{}, err
	}
	switch cfg.Auth.Mode {
	case "", "none":
		return nil, policy.Access{}, nil
	case "htpasswd":
		h, err := auth.NewHtpasswd(cfg.Auth.Htpasswd.Path, cfg.Auth.Htpasswd.Realm, cfg.Auth.Groups)
		if err != nil {
			return nil, policy.Access{}, fmt.Errorf("auth.htpasswd: %w", err)
		}
		log.Info().Str("auth", "htpasswd").Str("path", cfg.Auth.Htpasswd.Path).Int("rules", len(access.Rules)).Msg("client authentication on")
		return h, access, nil
	case "token":
		t := cfg.Auth.Token
		v, err := auth.NewTokenVerifier(auth.TokenOptions{Realm: t.Realm, Service: t.Service, Issuer: t.Issuer,
			JWKS: t.JWKS, RootCertBundle: t.RootCertBundle}, cfg.Auth.Groups)
		if err != nil {
			return nil, policy.Access{}, fmt.Errorf("auth.token: %w", err)
		}
		log.Info().Str("auth", "token").Str("realm", t.Realm).Str("service", t.Service).Str("issuer", t.Issuer).
			Int("rules", len(access.Rules)).Msg("client authentication on")
		return v, access, nil
	}
	return nil, policy.Access{}, fmt.Errorf("auth.mode %q is not supported", cfg.Auth.Mode)
}

// upstreamCredentials wraps tr with taglock's own credentials when
// upstream.auth.mode is basic or token; passthrough returns tr as it is.
func upstreamCredentials(u config.Upstream, tr http.RoundTripper, log zerolog.Logger) (http.RoundTripper, error) {
	a := u.Auth
	switch a.Mode {
	case "", "passthrough":
		return tr, nil
	case "basic", "token":
	default:
		return nil, fmt.Errorf("upstream.auth.mode %q is not supported", a.Mode)
	}
	var secret auth.Secret
	switch {
	case a.CredentialHelper != "":
		base, err := url.Parse(u.URL)
		if err != nil {
			return nil, fmt.Errorf("upstream.url: %w", err)
		}
		prog := a.CredentialHelper
		if !strings.ContainsRune(prog, '/') {
			prog = "docker-credential-" + prog
		}
		secret = &auth.CredentialHelper{Program: prog, Server: base.Host}
	case a.PasswordFile != "":
		pf := &auth.PasswordFile{User: a.Username, Path: a.PasswordFile}
		if _, _, err := pf.Credentials(context.Background(), false); err != nil {
			return nil, fmt.Errorf("upstream.auth.password_file: %w", err)
		}
		secret = pf
	case a.PasswordEnv != "":
		pw, ok := os.LookupEnv(a.PasswordEnv)
		if !ok || pw == "" {
			return nil, fmt.Errorf("upstream.auth.password_env: %s is not set", a.PasswordEnv)
		}
		secret = auth.Static{User: a.Username, Password: pw}
	default:
		secret = auth.Static{User: a.Username, Password: a.Password}
	}
	log.Info().Str("upstream", u.URL).Str("mode", a.Mode).Str("user", a.Username).
		Msg("upstream credentials: taglock's own service account; client credentials are not forwarded")
	if a.Mode == "token" {
		return auth.NewBearerToken(secret, tr), nil
	}
	return auth.NewBasic(secret, tr), nil
}

// ledgerGate guards the ledger API and web page while authentication is on.
// Loopback peers, the taglock commands on the server's host, see everything,
// as with authentication off. Other callers authenticate as registry clients
// do, and see only the repositories and tags their pull rights (and a
// token's scope) cover; a caller without credentials is challenged. Admin
// calls stay loopback-only whoever asks (package admin).
func ledgerGate(authn proxy.Authenticator, access policy.Access, audit *zerolog.Logger) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		if authn == nil {
			return h
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if loopbackPeer(r) {
				h.ServeHTTP(w, r)
				return
			}
			c, err := authn.Authenticate(r)
			if err == nil && c.Identity.User == "" {
				err = errors.New("authentication required to see the ledger")
			}
			if err != nil {
				audit.Warn().Str("event", "refused").Str("reason", "unauthenticated").Str("need", "ledger").
					Str("path", r.URL.Path).Str("peer", r.RemoteAddr).Msg(err.Error())
				w.Header().Set("WWW-Authenticate", authn.Challenge("registry:catalog:*", false))
				if strings.HasPrefix(r.URL.Path, admin.Prefix) {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusUnauthorized)
					_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error(), "code": "unauthorized"})
					return
				}
				http.Error(w, "taglock: "+err.Error(), http.StatusUnauthorized)
				return
			}
			v := callerView{id: c.Identity, scope: c.Scope, access: access}
			h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), viewKey{}, v)))
		})
	}
}

func loopbackPeer(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	ip := net.ParseIP(host)
	return err == nil && ip != nil && ip.IsLoopback()
}

// callerView is what an authenticated caller of the ledger API and web page
// may see: what it may pull.
type callerView struct {
	id     policy.Identity
	scope  func(repo string, a policy.Action) bool
	access policy.Access
}

type viewKey struct{}

func (v callerView) Repo(repo string) bool {
	return v.scoped(repo) && v.access.CanPullAny(v.id, repo)
}

func (v callerView) Tag(repo, tag string) bool {
	return v.scoped(repo) && v.access.Decide(policy.AccessRequest{Identity: v.id, Action: policy.Pull, Repo: repo, Tag: tag}).Allowed
}

// scoped applies a bearer token's scope as the registry's catalog does: a
// token granting the catalog leaves the view to the access rules, and one
// granting repositories shows those only.
func (v callerView) scoped(repo string) bool {
	return v.scope == nil || v.scope("", policy.Pull) || v.scope(repo, policy.Pull)
}

// adminViewer and webViewer hand the view ledgerGate set to the API and the
// page; nil (everything) for loopback peers and with authentication off.
func adminViewer(r *http.Request) admin.Viewer {
	if v, ok := r.Context().Value(viewKey{}).(callerView); ok {
		return v
	}
	return nil
}

func webViewer(r *http.Request) web.Viewer {
	if v, ok := r.Context().Value(viewKey{}).(callerView); ok {
		return v
	}
	return nil
}

// keepPasswords stops taglock's own htpasswd passwords from travelling on to
// the upstream: with auth.mode htpasswd the client's Basic credentials are
// taglock's secrets, not the upstream's. An upstream that needs credentials
// gets taglock's own through upstream.auth basic or token, which replace the
// client's header themselves.
func keepPasswords(cfg config.Config, tr http.RoundTripper) http.RoundTripper {
	if cfg.Auth.Mode != "htpasswd" || (cfg.Upstream.Auth.Mode != "" && cfg.Upstream.Auth.Mode != "passthrough") {
		return tr
	}
	return stripBasic{tr}
}

type stripBasic struct{ next http.RoundTripper }

func (s stripBasic) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasPrefix(strings.ToLower(r.Header.Get("Authorization")), "basic ") {
		r = r.Clone(r.Context())
		r.Header.Del("Authorization")
	}
	return s.next.RoundTrip(r)
}
