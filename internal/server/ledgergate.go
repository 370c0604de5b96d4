package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/view"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy/authn"
)

// ledgerGate guards the ledger API and web page on the TCP listener while
// authentication is on. Every caller authenticates as registry clients do,
// and sees only the repositories and tags its pull rights (and a token's
// scope) cover; a caller without credentials is challenged. The peer's
// address counts for nothing: a TLS terminator or ingress on the same host,
// or another container of the pod, makes every caller loopback. The
// commands on the server's host see everything through the admin socket
// instead, which serves no admin calls here either (package admin).
func ledgerGate(authn authn.Authenticator, access policy.Access, audit *zerolog.Logger) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		if authn == nil {
			return h
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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

// viewer hands the view ledgerGate set to the API and the page; nil
// (everything) with authentication off.
func viewer(r *http.Request) view.Viewer {
	if v, ok := r.Context().Value(viewKey{}).(callerView); ok {
		return v
	}
	return nil
}
