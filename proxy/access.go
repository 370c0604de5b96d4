package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"

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

// need is one action the request needs, on a repository and maybe a tag.
type need struct {
	action policy.Action
	repo   string
	tag    string
}

// needs lists what rt needs; the catalog and the ping need nothing beyond
// authentication.
func needs(rt Route) []need {
	switch rt.Kind {
	case KindTags, KindReferrers, KindBlob, KindManifest:
	case KindUploadStart, KindUpload:
		return []need{{policy.Push, rt.Name, ""}}
	default:
		return nil
	}
	switch rt.Method {
	case http.MethodGet, http.MethodHead:
		return []need{{policy.Pull, rt.Name, rt.Tag}}
	case http.MethodDelete:
		return []need{{policy.Delete, rt.Name, rt.Tag}}
	case http.MethodPut:
		if len(rt.Tags) == 0 {
			return []need{{policy.Push, rt.Name, ""}}
		}
		out := make([]need, len(rt.Tags))
		for i, t := range rt.Tags {
			out[i] = need{policy.Push, rt.Name, t}
		}
		return out
	}
	return nil
}

// authorize authenticates the request and decides it against the access
// rules, on the parsed, canonical names in rt. It returns done when it has
// answered the request itself: a refusal, or a filtered catalog or tag
// list. A cross-repository mount the caller may not pull from is dropped
// from rt, so the client gets a plain upload session.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, rt *Route) (status int, done bool) {
	if s.auth == nil {
		return 0, false
	}
	ri := info(r.Context())
	c, err := s.auth.Authenticate(r)
	if err != nil {
		return s.unauthorized(w, r, *rt, "credentials", err.Error(), false), true
	}
	ri.user, ri.identity = userName(c.Identity), c.Identity
	if rt.Kind == KindPing && c.Identity.User == "" && r.Header.Get("Authorization") == "" {
		// docker login sends credentials only when challenged.
		return s.unauthorized(w, r, *rt, "ping", "authentication required", false), true
	}
	for _, n := range needs(*rt) {
		if st, refused := s.check(w, r, *rt, c, n); refused {
			return st, true
		}
	}
	if rt.Kind == KindUploadStart && rt.Query.Has("mount") {
		from := rt.Query.Get("from")
		allowed := from != "" && s.access.Decide(policy.AccessRequest{Identity: c.Identity, Action: policy.Pull, Repo: from}).Allowed &&
			(c.Scope == nil || c.Scope(from, policy.Pull))
		if !allowed {
			s.audit.Warn().Str("event", "mount-dropped").Str("repo", rt.Name).Str("from", from).Str("user", ri.user).
				Str("request_id", ri.id).Msg("cross-repository mount dropped: the caller may not pull from the source; a plain upload session is started instead")
			rt.Query.Del("mount")
			rt.Query.Del("from")
		}
	}
	switch {
	case rt.Kind == KindCatalog:
		if c.Scope != nil && !c.Scope("", policy.Pull) {
			return s.unauthorized(w, r, *rt, "catalog", "the credentials do not grant the catalog", r.Header.Get("Authorization") != ""), true
		}
		return s.filtered(w, r, *rt, func(name string) bool {
			return s.access.CanPullAny(c.Identity, name)
		}, "repositories"), true
	case rt.Kind == KindTags:
		return s.filtered(w, r, *rt, func(tag string) bool {
			return s.access.Decide(policy.AccessRequest{Identity: c.Identity, Action: policy.Pull, Repo: rt.Name, Tag: tag}).Allowed
		}, "tags"), true
	}
	return 0, false
}

// check decides one need; it answers the request when it is refused.
func (s *Server) check(w http.ResponseWriter, r *http.Request, rt Route, c Caller, n need) (int, bool) {
	if c.Scope != nil && !c.Scope(n.repo, n.action) {
		return s.unauthorized(w, r, rt, string(n.action), fmt.Sprintf("the token does not grant %s on %s", n.action, n.repo), r.Header.Get("Authorization") != ""), true
	}
	d := s.access.Decide(policy.AccessRequest{Identity: c.Identity, Action: n.action, Repo: n.repo, Tag: n.tag})
	if d.Allowed {
		return 0, false
	}
	e := &accessDenied{action: n.action, repo: n.repo, tag: n.tag, rule: d.Rule, identity: c.Identity, reason: d.Reason}
	s.auditAccess(r.Context(), e)
	if c.Identity.User == "" {
		// Anonymous: ask for credentials, which may be allowed.
		return s.challenge(w, rt, errcode.ErrorCodeUnauthorized.WithMessage("authentication required: "+d.Reason), false), true
	}
	return writeError(w, e, &s.log), true
}

// auditAccess writes the audit line and counts a refusal by the access
// rules.
func (s *Server) auditAccess(ctx context.Context, e *accessDenied) {
	ri := info(ctx)
	s.audit.Warn().Str("event", "refused").Str("reason", ReasonAccessDenied).Str("action", string(e.action)).
		Str("repo", e.repo).Str("tag", e.tag).Str("rule", e.rule).Str("user", ri.user).Str("request_id", ri.id).Msg(e.reason)
	if s.metrics != nil {
		s.metrics.refused(ReasonAccessDenied)
	}
}

// unauthorized answers 401 with the authenticator's challenge and writes
// one audit line; insufficient says valid credentials lacked the scope.
func (s *Server) unauthorized(w http.ResponseWriter, r *http.Request, rt Route, what, msg string, insufficient bool) int {
	ri := info(r.Context())
	s.audit.Warn().Str("event", "refused").Str("reason", "unauthenticated").Str("need", what).Str("repo", rt.Name).
		Str("user", ri.user).Str("request_id", ri.id).Msg(msg)
	if s.metrics != nil {
		s.metrics.refused("unauthenticated")
	}
	return s.challenge(w, rt, errcode.ErrorCodeUnauthorized.WithMessage(msg), insufficient)
}

// challenge answers 401 with the authenticator's challenge for the scope rt
// needs; insufficient says valid credentials lacked it.
func (s *Server) challenge(w http.ResponseWriter, rt Route, e errcode.Error, insufficient bool) int {
	scope := ""
	switch {
	case rt.Kind == KindCatalog:
		scope = "registry:catalog:*"
	case rt.Kind == KindUploadStart || rt.Kind == KindUpload || rt.Kind == KindManifest && rt.Method == http.MethodPut:
		// Clients ask for pull and push together when they push.
		scope = "repository:" + rt.Name + ":pull,push"
	case rt.Name != "":
		var actions []string
		for _, n := range needs(rt) {
			if !slices.Contains(actions, string(n.action)) {
				actions = append(actions, string(n.action))
			}
		}
		scope = "repository:" + rt.Name + ":" + strings.Join(actions, ",")
	}
	w.Header().Set("WWW-Authenticate", s.auth.Challenge(scope, insufficient))
	return serveOCI(w, http.StatusUnauthorized, e)
}

// userName is how an identity is written in the request log and the ledger.
func userName(id policy.Identity) string {
	if id.User == "" {
		return "anonymous"
	}
	return id.User
}

// maxListSize bounds a catalog or tag list taglock buffers to filter.
const maxListSize = 32 << 20

// filtered serves a catalog or tag list with only the entries keep allows.
// The upstream's pagination is kept: a Link to the next page stays valid,
// since it names the last entry the upstream returned, filtered or not.
func (s *Server) filtered(w http.ResponseWriter, r *http.Request, rt Route, keep func(string) bool, field string) int {
	ctx := r.Context()
	req, err := newRequest(ctx, http.MethodGet, rt.URL(), nil, r.Header)
	if err != nil {
		return writeError(w, err, &s.log)
	}
	resp, err := s.up.RoundTrip(req)
	if err != nil {
		return writeError(w, fmt.Errorf("%w: %s: %v", ErrLookup, rt.Path(), err), &s.log)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxListSize+1))
	if err != nil {
		return writeError(w, fmt.Errorf("%w: read %s: %v", ErrLookup, rt.Path(), err), &s.log)
	}
	if resp.StatusCode != http.StatusOK {
		return writeError(w, &upstreamAnswer{status: resp.StatusCode, header: resp.Header, body: body}, &s.log)
	}
	if len(body) > maxListSize {
		return writeError(w, fmt.Errorf("%w: %s answered more than %d bytes", ErrLookup, rt.Path(), maxListSize), &s.log)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(body, &doc); err != nil {
		return writeError(w, fmt.Errorf("%w: %s: %v", ErrLookup, rt.Path(), err), &s.log)
	}
	var entries []string
	if raw, ok := doc[field]; ok && !bytes.Equal(raw, []byte("null")) {
		if err := json.Unmarshal(raw, &entries); err != nil {
			return writeError(w, fmt.Errorf("%w: %s: %v", ErrLookup, rt.Path(), err), &s.log)
		}
	}
	kept := make([]string, 0, len(entries))
	for _, e := range entries {
		if keep(e) {
			kept = append(kept, e)
		}
	}
	doc[field], _ = json.Marshal(kept)
	out, err := json.Marshal(doc)
	if err != nil {
		return writeError(w, err, &s.log)
	}
	for _, k := range []string{"Link", "Docker-Distribution-Api-Version"} {
		if v := resp.Header.Values(k); len(v) > 0 {
			w.Header()[k] = v
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(out)
	}
	return http.StatusOK
}
