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

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy/authn"
)

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
// rules, on the parsed, canonical names in rt. It returns the caller, or an
// error the one writer answers with (a challenge or a refusal). A
// cross-repository mount the caller may not pull from is dropped from rt,
// so the client gets a plain upload session. With authentication off it
// returns the anonymous caller and decides nothing.
func (s *Server) authorize(r *http.Request, rt *Route) (authn.Caller, error) {
	if s.auth == nil {
		return authn.Caller{}, nil
	}
	ctx := r.Context()
	ri := info(ctx)
	presented := r.Header.Get("Authorization") != ""
	c, err := s.auth.Authenticate(r)
	if err != nil {
		return authn.Caller{}, s.unauthenticated(ctx, *rt, "credentials", err.Error(), false)
	}
	ri.user, ri.identity = userName(c.Identity), c.Identity
	if rt.Kind == KindPing && c.Identity.User == "" && !presented {
		// docker login sends credentials only when challenged.
		return authn.Caller{}, s.unauthenticated(ctx, *rt, "ping", "authentication required", false)
	}
	for _, n := range needs(*rt) {
		if c.Scope != nil && !c.Scope(n.repo, n.action) {
			return authn.Caller{}, s.unauthenticated(ctx, *rt, string(n.action), fmt.Sprintf("the token does not grant %s on %s", n.action, n.repo), presented)
		}
		d := s.access.Decide(policy.AccessRequest{Identity: c.Identity, Action: n.action, Repo: n.repo, Tag: n.tag})
		if d.Allowed {
			continue
		}
		e := &accessDenied{action: n.action, repo: n.repo, tag: n.tag, rule: d.Rule, identity: c.Identity, reason: d.Reason}
		s.audit.refuseAccess(ctx, e)
		if c.Identity.User == "" {
			// Anonymous: ask for credentials, which may be allowed.
			return authn.Caller{}, &unauthenticated{challenge: s.auth.Challenge(scopeOf(*rt), false), msg: "authentication required: " + d.Reason}
		}
		return authn.Caller{}, e
	}
	if rt.Kind == KindUploadStart && rt.Query.Has("mount") {
		from := rt.Query.Get("from")
		allowed := from != "" && s.access.Decide(policy.AccessRequest{Identity: c.Identity, Action: policy.Pull, Repo: from}).Allowed &&
			(c.Scope == nil || c.Scope(from, policy.Pull))
		if !allowed {
			s.audit.audit.Warn().Str("event", "mount-dropped").Str("repo", rt.Name).Str("from", from).Str("user", ri.user).
				Str("request_id", ri.id).Msg("cross-repository mount dropped: the caller may not pull from the source; a plain upload session is started instead")
			rt.Query.Del("mount")
			rt.Query.Del("from")
		}
	}
	if rt.Kind == KindCatalog && c.Scope != nil && !c.Scope("", policy.Pull) {
		return authn.Caller{}, s.unauthenticated(ctx, *rt, "catalog", "the credentials do not grant the catalog", presented)
	}
	return c, nil
}

// list serves a catalog or tag list with only the repositories or tags c
// may pull.
func (s *Server) list(w http.ResponseWriter, r *http.Request, rt Route, c authn.Caller) error {
	if rt.Kind == KindCatalog {
		return filtered(w, r, s.upstream, rt, func(name string) bool {
			return s.access.CanPullAny(c.Identity, name)
		}, "repositories")
	}
	return filtered(w, r, s.upstream, rt, func(tag string) bool {
		return s.access.Decide(policy.AccessRequest{Identity: c.Identity, Action: policy.Pull, Repo: rt.Name, Tag: tag}).Allowed
	}, "tags")
}

// unauthenticated audits a request refused for its credentials and
// returns the 401 to answer it with; insufficient says valid credentials
// lacked the scope.
func (s *Server) unauthenticated(ctx context.Context, rt Route, what, msg string, insufficient bool) error {
	s.audit.unauthenticated(ctx, rt.Name, what, msg)
	return &unauthenticated{challenge: s.auth.Challenge(scopeOf(rt), insufficient), msg: msg}
}

// scopeOf is the Docker token scope rt needs, for a challenge.
func scopeOf(rt Route) string {
	switch {
	case rt.Kind == KindCatalog:
		return "registry:catalog:*"
	case rt.Kind == KindUploadStart || rt.Kind == KindUpload || rt.Kind == KindManifest && rt.Method == http.MethodPut:
		// Clients ask for pull and push together when they push.
		return "repository:" + rt.Name + ":pull,push"
	case rt.Name != "":
		var actions []string
		for _, n := range needs(rt) {
			if !slices.Contains(actions, string(n.action)) {
				actions = append(actions, string(n.action))
			}
		}
		return "repository:" + rt.Name + ":" + strings.Join(actions, ",")
	}
	return ""
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
func filtered(w http.ResponseWriter, r *http.Request, up Upstream, rt Route, keep func(string) bool, field string) error {
	ctx := r.Context()
	req, err := newRequest(ctx, http.MethodGet, rt.URL(), nil, r.Header)
	if err != nil {
		return err
	}
	resp, err := up.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrLookup, rt.Path(), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxListSize+1))
	if err != nil {
		return fmt.Errorf("%w: read %s: %v", ErrLookup, rt.Path(), err)
	}
	if resp.StatusCode != http.StatusOK {
		return &upstreamAnswer{status: resp.StatusCode, header: resp.Header, body: body}
	}
	if len(body) > maxListSize {
		return fmt.Errorf("%w: %s answered more than %d bytes", ErrLookup, rt.Path(), maxListSize)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(body, &doc); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrLookup, rt.Path(), err)
	}
	var entries []string
	if raw, ok := doc[field]; ok && !bytes.Equal(raw, []byte("null")) {
		if err := json.Unmarshal(raw, &entries); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrLookup, rt.Path(), err)
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
		return err
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
	return nil
}
