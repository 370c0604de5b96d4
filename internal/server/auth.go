package server

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/auth"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy/authn"
)

// clientAuth builds the authenticator and access rules the auth and access
// sections describe; a nil Authenticator means authentication is off.
func clientAuth(cfg config.Config, log zerolog.Logger) (authn.Authenticator, policy.Access, error) {
	a, access, err := credentialAuth(cfg, log)
	if err != nil || a == nil || cfg.TLS.ClientCA == "" {
		return a, access, err
	}
	log.Info().Str("client_ca", cfg.TLS.ClientCA).Msg("client certificates verified against client_ca name identities (subject common name)")
	return auth.NewClientCert(a, cfg.Auth.Groups), access, nil
}

// credentialAuth is the authenticator for credentials sent in requests.
func credentialAuth(cfg config.Config, log zerolog.Logger) (authn.Authenticator, policy.Access, error) {
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
