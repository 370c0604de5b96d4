package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// tagDecision is the verdict for one tag a manifest PUT writes.
type tagDecision struct {
	tagState
	verdict policy.Verdict
}

// putManifest handles PUT /v2/<name>/manifests/<ref>[?tag=...]. A push that
// writes tags goes through these steps, each in one function:
//
//  1. read and parse the exact bytes, and walk the manifest's whole graph
//     (closure);
//  2. decide every tag on its effective state, adopting tags the upstream
//     holds and the ledger never saw (decideWrite);
//  3. reserve the tags and the graph in the ledger, on the condition that
//     no binding changed since step 2 (reservePush); a delete of anything
//     in the graph now waits for this push, and this push waited for any
//     delete already under way; then check that what lies below the
//     manifest's own references is still there, which the registry does
//     not check (checkPresent);
//  4. forward the bytes with a deadline the reservation records;
//  5. commit the tags the upstream applied, release on a definite refusal,
//     and leave the reservation to the settler when the outcome is unknown
//     (finishPush).
func (s *Server) putManifest(w http.ResponseWriter, r *http.Request, rt Route) error {
	ctx := r.Context()
	body, err := readManifest(r, s.maxManifestSize)
	if err != nil {
		return err
	}
	alg := digest.Canonical
	if rt.Digest != "" {
		alg = rt.Digest.Algorithm()
	}
	dgst := alg.FromBytes(body)
	if rt.Digest != "" && dgst != rt.Digest {
		return badRequest(errcode.ErrorCodeDigestInvalid, "manifest body has digest %s, not the %s named in the URL", dgst, rt.Digest)
	}
	refs, err := parseManifest(r.Header.Get("Content-Type"), body)
	if err != nil {
		return badRequest(errcode.ErrorCodeManifestInvalid, "%v", err)
	}
	if len(rt.Tags) == 0 {
		// A push by digest binds no tag; it only becomes part of the
		// graph that later tags and deletes consult.
		resp, err := send(ctx, s.upstream, http.MethodPut, rt.URL(), r.Header, r.Host, body, s.now().Add(s.lookupTimeout))
		if err != nil {
			return err
		}
		if resp.StatusCode/100 == 2 {
			s.graphs.record(ctx, manifestRecord(rt.Name, dgst, int64(len(body)), refs))
		}
		return relay(w, resp, dgst, s.log)
	}

	g, err := s.graphs.walk(ctx, r.Header, rt.Name, refs)
	if err != nil {
		return err
	}
	if err := s.reservations.writable(); err != nil {
		return err
	}
	decisions, res, err := s.reservePush(ctx, r, rt, dgst, g.closure)
	if err != nil {
		return err
	}
	defer s.reservations.done(res.ID)
	if err := s.graphs.checkPresent(ctx, r.Header, rt.Name, g); err != nil {
		s.reservations.releaseOrLog(res.ID)
		return err
	}
	resp, err := send(ctx, s.upstream, http.MethodPut, rt.URL(), r.Header, r.Host, body, res.Deadline)
	if err != nil {
		// The upstream may or may not have stored it: the settler finds
		// out, and keeps the tags held until it knows.
		s.reservations.handOver(res)
		return &unknownOutcome{op: "push of " + rt.Name + ":" + strings.Join(rt.Tags, ","), err: err}
	}
	p := pushed{res: res, decisions: decisions, digest: dgst, body: body, refs: refs, graph: g}
	if err := s.finishPush(ctx, rt, resp, p); err != nil {
		drain(resp)
		return err
	}
	return relay(w, resp, dgst, s.log)
}

// reservePush decides every tag and reserves them, deciding again whenever
// a binding changed in between, and waiting (up to the configured wait)
// while another request holds a tag or the graph.
func (s *Server) reservePush(ctx context.Context, r *http.Request, rt Route, dgst digest.Digest, closure []digest.Digest) ([]tagDecision, storage.Reservation, error) {
	rs := s.reservations
	id, err := rs.claim(r.Header.Get("Authorization"))
	if err != nil {
		return nil, storage.Reservation{}, err
	}
	ri := info(ctx)
	wait := rs.waiter()
	for {
		decisions, err := s.decideWrite(ctx, r, rt.Name, rt.Tags, dgst)
		if err != nil {
			rs.done(id)
			return nil, storage.Reservation{}, err
		}
		expect := map[string]storage.Seen{}
		for _, d := range decisions {
			expect[d.tag] = d.seen()
		}
		res, err := s.ledger.Reserve(ctx, storage.Reservation{ID: id, Repo: rt.Name, Tags: rt.Tags, Digest: dgst, Closure: closure,
			Deadline: s.now().Add(s.lookupTimeout), Owner: rs.owner, User: ri.user, Expect: expect})
		if err == nil {
			return decisions, res, nil
		}
		if errors.Is(err, storage.ErrChanged) {
			continue // another request changed a binding in between: decide again
		}
		if err := wait(ctx, err); err != nil {
			rs.done(id)
			return nil, storage.Reservation{}, err
		}
	}
}

// decideWrite looks up (adopting from the upstream when the ledger has never
// seen a tag) and decides every tag. A refusal of any tag refuses the push.
func (s *Server) decideWrite(ctx context.Context, r *http.Request, repo string, tags []string, dgst digest.Digest) ([]tagDecision, error) {
	out := make([]tagDecision, 0, len(tags))
	for _, tag := range tags {
		st, err := s.adopter.lookupTag(ctx, r.Header, repo, tag)
		if err != nil {
			return nil, err
		}
		d := tagDecision{tagState: st, verdict: policy.DecideWrite(st.mode, st.bound, dgst)}
		if d.verdict == policy.Deny {
			v := &Violation{Reason: ReasonTagMoved, Repo: repo, Tag: tag, Recorded: d.bound, Attempted: dgst,
				PushedAt: d.current.PushedAt, PushedBy: d.current.PushedBy, Rule: d.rule, Mode: d.mode.String(),
				Hint: "Push this image under a new tag instead."}
			s.audit.refuse(ctx, v)
			return nil, v
		}
		if d.verdict != policy.Identical {
			if err := s.promotion.check(ctx, repo, tag, dgst); err != nil {
				return nil, err
			}
		}
		out = append(out, d)
	}
	return out, nil
}

// pushed is a push the upstream answered.
type pushed struct {
	res       storage.Reservation
	decisions []tagDecision
	digest    digest.Digest
	body      []byte
	refs      manifestRefs
	graph     graph
}

// finishPush settles the reservation on the upstream's answer: a 2xx
// commits the tags the upstream applied, a 5xx leaves the outcome to the
// settler, and any other answer releases the tags.
func (s *Server) finishPush(ctx context.Context, rt Route, resp *http.Response, p pushed) error {
	op := "push of " + rt.Name + ":" + strings.Join(rt.Tags, ",")
	switch {
	case resp.StatusCode/100 == 2:
		if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != p.digest.String() {
			// The upstream says it stored other bytes than taglock sent:
			// record nothing until it shows what the tag holds.
			s.reservations.handOver(p.res)
			return &unknownOutcome{op: op, err: fmt.Errorf("the upstream answered %d naming digest %s, not the %s of the bytes taglock sent", resp.StatusCode, got, p.digest), answered: true}
		}
		return s.commit(ctx, p, appliedTags(rt, resp))
	case resp.StatusCode >= 500:
		// It may have stored the manifest before failing.
		s.reservations.handOver(p.res)
		return &unknownOutcome{op: op, err: upstreamFailure(resp), answered: true}
	default:
		s.reservations.releaseOrLog(p.res.ID)
	}
	return nil
}

// upstreamFailure describes an upstream's error answer: its status and, from
// an OCI error body, its first message.
func upstreamFailure(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var doc struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if json.Unmarshal(b, &doc) == nil && len(doc.Errors) > 0 {
		return fmt.Errorf("the upstream answered %d %s: %s", resp.StatusCode, doc.Errors[0].Code, doc.Errors[0].Message)
	}
	return fmt.Errorf("the upstream answered %d", resp.StatusCode)
}

// appliedTags is what a 2xx answer to a manifest PUT applied: the path's
// tag, or the ?tag= parameters the upstream names in OCI-Tag headers
// (comma-separated lists, RFC 9110). A registry that ignores ?tag= names
// none, and the ledger then binds none.
func appliedTags(rt Route, resp *http.Response) []string {
	if rt.Tag != "" {
		return []string{rt.Tag}
	}
	var applied []string
	for _, v := range resp.Header.Values("OCI-Tag") {
		for t := range strings.SplitSeq(v, ",") {
			if t = strings.TrimSpace(t); slices.Contains(rt.Tags, t) && !slices.Contains(applied, t) {
				applied = append(applied, t)
			}
		}
	}
	return applied
}

// commit records the accepted push: the bindings of the applied tags, their
// history, and the manifest records the closure learned, in one write.
func (s *Server) commit(ctx context.Context, p pushed, applied []string) error {
	now := s.now()
	ri := info(ctx)
	var (
		bindings []storage.Binding
		events   []storage.Event
	)
	for _, d := range p.decisions {
		if !slices.Contains(applied, d.tag) {
			continue
		}
		b, ev := newBinding(p.res, d, now, ri.user, p.body, p.refs)
		ev.RequestID = ri.id
		switch d.verdict {
		case policy.Identical:
			s.audit.audit.Info().Str("event", "identical").Str("repo", p.res.Repo).Str("tag", d.tag).Str("digest", p.digest.String()).
				Str("user", ri.user).Str("request_id", ri.id).Msg("identical re-push accepted")
		case policy.WarnMove:
			ev.Reason = ReasonTagMoved
			ev.Message = fmt.Sprintf("warn mode: tag %q moved from %s to %s; immutable mode would have refused it", p.res.Repo+":"+d.tag, d.bound, p.digest)
			s.audit.warned(ev)
		}
		bindings = append(bindings, b)
		events = append(events, ev)
	}
	ms := append(slices.Clone(p.graph.learned), manifestRecord(p.res.Repo, p.digest, int64(len(p.body)), p.refs))
	if err := s.ledger.Commit(ctx, p.res.ID, bindings, events, ms...); err != nil {
		// The upstream holds the manifest but the ledger could not record
		// it; the reservation stays and is settled when the ledger can
		// be written again, and until then no new write is forwarded.
		s.reservations.stuck(p.res)
		return &unrecorded{op: "push of " + p.res.Repo + ":" + strings.Join(applied, ","), err: err}
	}
	return nil
}

// newBinding is the record a push of res makes for one decided tag, and its
// history event. The mode recorded is the mode that governed the decision,
// so a tag decided as immutable is recorded immutable whatever the
// configuration says; an identical re-push keeps the first push's record.
func newBinding(res storage.Reservation, d tagDecision, now time.Time, user string, body []byte, refs manifestRefs) (storage.Binding, storage.Event) {
	ev := storage.Event{Time: now, Repo: res.Repo, Tag: d.tag, Digest: res.Digest, Previous: d.bound, User: user, Rule: d.rule}
	b := storage.Binding{Repo: res.Repo, Tag: d.tag, Digest: res.Digest, MediaType: refs.MediaType, Size: int64(len(body)),
		Mode: d.mode, Rule: d.bindRule, PushedAt: now, PushedBy: user, Closure: res.Closure}
	if d.mode == policy.Immutable {
		b.Manifest = body
	}
	switch d.verdict {
	case policy.Bind:
		ev.Kind = storage.EventAccepted
	case policy.Identical:
		ev.Kind = storage.EventIdentical
		// Keep the first push's record; a re-push only revives a deleted
		// tag and refreshes what the ledger knows of it.
		if !d.current.PushedAt.IsZero() {
			b.PushedAt, b.PushedBy = d.current.PushedAt, d.current.PushedBy
		}
	case policy.Move:
		ev.Kind = storage.EventMoved
	case policy.WarnMove:
		ev.Kind = storage.EventWarned
	}
	return b, ev
}

// readManifest reads at most limit bytes of the body.
func readManifest(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, &tooLargeError{limit}
	}
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	n, err := buf.ReadFrom(io.LimitReader(r.Body, limit+1))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, &requestError{code: errcode.ErrorCodeManifestInvalid, status: http.StatusRequestTimeout,
			msg: "the manifest body stopped arriving before it was complete (limits.body_idle_timeout)"}
	}
	if err != nil {
		// The client's framing is broken (a bad chunk, a body cut
		// short): its fault, not taglock's.
		return nil, badRequest(errcode.ErrorCodeManifestInvalid, "manifest body could not be read: %v", err)
	}
	if n > limit {
		return nil, &tooLargeError{limit}
	}
	return buf.Bytes(), nil
}
