package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// tagDecision is the verdict for one tag a manifest PUT writes.
type tagDecision struct {
	tag     string
	mode    policy.Mode
	rule    string
	current storage.Binding // the binding before this push, when found
	bound   digest.Digest   // live binding digest ("" = free)
	verdict policy.Verdict
}

// putManifest handles PUT /v2/<name>/manifests/<ref>[?tag=...].
func (s *Server) putManifest(w http.ResponseWriter, r *http.Request, rt Route) error {
	ctx := r.Context()
	body, err := readManifest(r, s.maxManifest)
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
		resp, err := s.sendManifest(ctx, r, rt, body)
		if err != nil {
			return err
		}
		if resp.StatusCode/100 == 2 {
			s.recordManifest(ctx, rt.Name, dgst, int64(len(body)), refs)
		}
		return s.relay(w, resp, dgst)
	}

	var (
		decisions []tagDecision
		res       storage.Reservation
	)
	deadline := s.now().Add(s.wait)
	for {
		decisions, err = s.decideWrite(ctx, r, rt.Name, rt.Tags, dgst)
		if err != nil {
			return err
		}
		expect := map[string]digest.Digest{}
		for _, d := range decisions {
			expect[d.tag] = d.bound
		}
		res, err = s.ledger.Reserve(ctx, storage.Reservation{Repo: rt.Name, Tags: rt.Tags, Digest: dgst, Expect: expect})
		if err == nil {
			break
		}
		var busy *storage.BusyError
		switch {
		case errors.Is(err, storage.ErrChanged):
			continue // another push committed in between: decide again
		case errors.As(err, &busy):
			if s.now().After(deadline) {
				return fmt.Errorf("%w: %s:%s is being pushed with %s since %s", errBusy, busy.Repo, busy.Tag, busy.Digest, busy.Since.UTC().Format(time.RFC3339))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		default:
			return fmt.Errorf("%w: reserve: %v", ErrLedger, err)
		}
	}
	s.inflight.Store(res.ID, struct{}{})
	defer s.inflight.Delete(res.ID)

	closure, err := s.closure(ctx, r.Header, rt.Name, refs)
	if err != nil {
		s.releaseOrLog(res.ID)
		return err
	}
	resp, err := s.sendManifest(ctx, r, rt, body)
	if err != nil {
		// The upstream may or may not have stored it: find out later.
		s.reconcileLater(res)
		return err
	}
	switch {
	case resp.StatusCode/100 == 2:
		applied := rt.Tags
		if rt.Tag == "" {
			// Tags given as ?tag= are applied only by registries that say
			// so with OCI-Tag headers; the ledger records what was applied.
			applied = nil
			for _, t := range resp.Header.Values("OCI-Tag") {
				if slices.Contains(rt.Tags, t) {
					applied = append(applied, t)
				}
			}
		}
		if err := s.commit(ctx, r, res, decisions, applied, dgst, int64(len(body)), refs, closure, body); err != nil {
			drain(resp)
			return err
		}
	case resp.StatusCode >= 500:
		s.reconcileLater(res)
	default:
		s.releaseOrLog(res.ID)
	}
	return s.relay(w, resp, dgst)
}

// decideWrite looks up (adopting from the upstream when the ledger has never
// seen a tag) and decides every tag. A refusal of any tag refuses the push.
func (s *Server) decideWrite(ctx context.Context, r *http.Request, repo string, tags []string, dgst digest.Digest) ([]tagDecision, error) {
	out := make([]tagDecision, 0, len(tags))
	for _, tag := range tags {
		d, err := s.lookupTag(ctx, r.Header, repo, tag)
		if err != nil {
			return nil, err
		}
		d.verdict = policy.DecideWrite(d.mode, d.bound, dgst)
		if d.verdict == policy.Deny {
			v := &Violation{Reason: ReasonTagMoved, Repo: repo, Tag: tag, Recorded: d.bound, Attempted: dgst,
				PushedAt: d.current.PushedAt, PushedBy: d.current.PushedBy, Rule: d.rule, Mode: d.mode.String(),
				Hint: "Push this image under a new tag instead."}
			s.refuse(ctx, v)
			return nil, v
		}
		if d.verdict != policy.Identical {
			if err := s.checkPromotion(ctx, repo, tag, dgst); err != nil {
				return nil, err
			}
		}
		out = append(out, d)
	}
	return out, nil
}

// checkPromotion refuses a tag write into a guarded repository unless the
// source repository's ledger bindings hold the digest. An identical re-push
// is not asked: the tag already holds that digest.
func (s *Server) checkPromotion(ctx context.Context, repo, tag string, dgst digest.Digest) error {
	rule, source, ok := policy.MatchPromotion(s.promo, repo)
	if !ok {
		return nil
	}
	bs, err := s.ledger.Bindings(ctx, source)
	if err != nil {
		return fmt.Errorf("%w: bindings of %s: %v", ErrLedger, source, err)
	}
	held := make(map[string]digest.Digest, len(bs))
	for _, b := range bs {
		if !b.Deleted {
			held[b.Tag] = b.Digest
		}
	}
	d := policy.DecidePromotion(rule, source, tag, dgst, held)
	if d.Allowed {
		return nil
	}
	v := &Violation{Reason: ReasonNotPromoted, Repo: repo, Tag: tag, Recorded: d.StagingDigest, Attempted: dgst, Rule: d.Rule,
		Source: d.Source, Hint: "Promote the digest staging holds, e.g. taglock promote " + d.Source + ":" + tag + " " + repo + ":" + tag + ".",
		text: "promotion guard: " + d.Reason + "."}
	s.refuse(ctx, v)
	return v
}

// lookupTag returns the tag's mode and live binding, adopting an upstream
// tag the ledger has never seen (for tags that are not mutable).
func (s *Server) lookupTag(ctx context.Context, h http.Header, repo, tag string) (tagDecision, error) {
	configured, rule := s.im.ModeFor(repo, tag)
	d := tagDecision{tag: tag, mode: configured, rule: rule}
	b, err := s.ledger.Binding(ctx, repo, tag)
	switch {
	case err == nil:
		d.current = b
		d.mode = policy.Effective(configured, b.Mode)
		if d.mode != configured {
			d.rule = b.Rule + " (recorded when first pushed)"
		}
		if !b.Deleted || b.Mode == policy.Immutable.String() {
			d.bound = b.Digest
		}
		return d, nil
	case !errors.Is(err, storage.ErrNotFound):
		return d, fmt.Errorf("%w: binding %s:%s: %v", ErrLedger, repo, tag, err)
	}
	if configured == policy.Mutable {
		return d, nil
	}
	b, found, err := s.adopt(ctx, h, repo, tag, configured, rule)
	if err != nil {
		if configured == policy.Warn && !errors.As(err, new(*upstreamAnswer)) {
			// Warn never refuses, so a failed lookup cannot make it allow
			// something it should not; note it and go on.
			s.log.Warn().Err(err).Str("repo", repo).Str("tag", tag).Msg("warn mode: upstream lookup failed")
			return d, nil
		}
		return d, err
	}
	if found {
		d.current, d.bound = b, b.Digest
	}
	return d, nil
}

// commit records the accepted push.
func (s *Server) commit(ctx context.Context, r *http.Request, res storage.Reservation, decisions []tagDecision, applied []string,
	dgst digest.Digest, size int64, refs manifestRefs, closure []digest.Digest, body []byte) error {
	now := s.now()
	ri := info(ctx)
	var (
		bindings []storage.Binding
		events   []storage.Event
	)
	for _, d := range decisions {
		if !slices.Contains(applied, d.tag) {
			continue
		}
		ev := storage.Event{Time: now, Repo: res.Repo, Tag: d.tag, Digest: dgst, Previous: d.bound, User: ri.user, Rule: d.rule, RequestID: ri.id}
		b := storage.Binding{Repo: res.Repo, Tag: d.tag, Digest: dgst, MediaType: refs.MediaType, Size: size,
			Mode: d.mode.String(), Rule: d.rule, PushedAt: now, PushedBy: ri.user, Closure: closure}
		if d.mode == policy.Immutable {
			b.Manifest = body
		}
		switch d.verdict {
		case policy.Bind:
			ev.Kind = storage.EventAccepted
		case policy.Identical:
			ev.Kind = storage.EventIdentical
			// Keep the first push's record; a re-push only revives a
			// deleted tag and refreshes what the ledger knows of it.
			b.PushedAt, b.PushedBy = d.current.PushedAt, d.current.PushedBy
			if b.PushedAt.IsZero() {
				b.PushedAt, b.PushedBy = now, ri.user
			}
			if policy.Effective(d.mode, d.current.Mode) == policy.Immutable {
				b.Mode = policy.Immutable.String()
			}
		case policy.Move:
			ev.Kind = storage.EventMoved
		case policy.WarnMove:
			ev.Kind = storage.EventWarned
			ev.Reason = ReasonTagMoved
			ev.Message = fmt.Sprintf("warn mode: tag %q moved from %s to %s; immutable mode would have refused it", res.Repo+":"+d.tag, d.bound, dgst)
			s.warned(ev)
		}
		if ev.Kind == storage.EventIdentical {
			s.audit.Info().Str("event", "identical").Str("repo", res.Repo).Str("tag", d.tag).Str("digest", dgst.String()).
				Str("user", ri.user).Str("request_id", ri.id).Msg("identical re-push accepted")
		}
		bindings = append(bindings, b)
		events = append(events, ev)
	}
	m := manifestRecord(res.Repo, dgst, size, refs)
	if err := s.ledger.Commit(ctx, res.ID, bindings, events, m); err != nil {
		// The upstream holds the manifest but the ledger could not record
		// it; the reservation stays and is reconciled, and the client is
		// told the push did not complete.
		s.reconcileLater(res)
		return fmt.Errorf("%w: commit: %v", ErrLedger, err)
	}
	return nil
}

// sendManifest PUTs the exact bytes received to the upstream.
func (s *Server) sendManifest(ctx context.Context, r *http.Request, rt Route, body []byte) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	h := r.Header.Clone()
	h.Del("Content-Length")
	req, err := newRequest(ctx, http.MethodPut, rt.URL(), body, h)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Host = r.Host
	resp, err := s.up.RoundTrip(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%w: manifest put: %v", ErrLookup, err)
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// relay writes the upstream's answer to a manifest PUT, with the digest
// taglock computed from the bytes it forwarded.
func (s *Server) relay(w http.ResponseWriter, resp *http.Response, dgst digest.Digest) error {
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	if resp.StatusCode/100 == 2 {
		if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != dgst.String() {
			s.log.Warn().Str("computed", dgst.String()).Str("upstream", got).Msg("upstream reported a different manifest digest; using the computed one")
		}
		w.Header().Set("Docker-Content-Digest", dgst.String())
	}
	w.WriteHeader(resp.StatusCode)
	_, err := io.Copy(w, resp.Body)
	if err != nil {
		s.log.Debug().Err(err).Msg("relay: copy to client")
	}
	return nil
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
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	if n > limit {
		return nil, &tooLargeError{limit}
	}
	return buf.Bytes(), nil
}

// cancelBody releases a request's context when its response is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}
