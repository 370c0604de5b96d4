package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// deleteManifest handles DELETE /v2/<name>/manifests/<tag|digest>.
func (s *Server) deleteManifest(w http.ResponseWriter, r *http.Request, rt Route) error {
	ctx := r.Context()
	if rt.Tag != "" {
		d, err := s.lookupTagForDelete(ctx, rt.Name, rt.Tag)
		if err != nil {
			return err
		}
		switch policy.DecideDelete(d.mode) {
		case policy.DeleteDeny:
			v := &Violation{Reason: ReasonTagDeleted, Repo: rt.Name, Tag: rt.Tag, Recorded: d.bound,
				PushedAt: d.current.PushedAt, PushedBy: d.current.PushedBy, Rule: d.rule, Mode: d.mode.String(),
				Hint: "Immutable tags are never deleted through the registry API; retention can release them by policy."}
			s.refuse(ctx, v)
			return v
		case policy.DeleteWarn:
			s.warnDelete(ctx, rt.Name, rt.Tag, d.bound, d.rule)
		}
		resp, err := s.send(ctx, r, rt)
		if err != nil {
			return err
		}
		if resp.StatusCode/100 == 2 && d.current.Digest != "" {
			s.tombstone(ctx, []storage.Binding{d.current})
		}
		return s.copyResponse(w, resp)
	}
	if err := s.checkProtected(ctx, r.Header, rt.Name, rt.Digest, ReasonManifestDeleted); err != nil {
		return err
	}
	resp, err := s.send(ctx, r, rt)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 == 2 {
		// A delete by digest removes every tag on that digest.
		if bs, err := s.ledger.Referencing(ctx, rt.Name, rt.Digest); err == nil {
			var gone []storage.Binding
			for _, b := range bs {
				if b.Digest == rt.Digest && !b.Deleted {
					gone = append(gone, b)
				}
			}
			s.tombstone(ctx, gone)
		} else {
			s.log.Error().Err(err).Str("repo", rt.Name).Msg("could not record deleted tags")
		}
	}
	return s.copyResponse(w, resp)
}

// deleteBlob handles DELETE /v2/<name>/blobs/<digest>.
func (s *Server) deleteBlob(w http.ResponseWriter, r *http.Request, rt Route) error {
	if err := s.checkProtected(r.Context(), r.Header, rt.Name, rt.Digest, ReasonBlobDeleted); err != nil {
		return err
	}
	s.forward(w, r, rt)
	return nil
}

// lookupTagForDelete is lookupTag without adoption: deleting an immutable
// tag is refused whether or not the ledger knows it.
func (s *Server) lookupTagForDelete(ctx context.Context, repo, tag string) (tagDecision, error) {
	configured, rule := s.im.ModeFor(repo, tag)
	d := tagDecision{tag: tag, mode: configured, rule: rule}
	b, err := s.ledger.Binding(ctx, repo, tag)
	switch {
	case err == nil:
		d.current, d.bound = b, b.Digest
		d.mode = policy.Effective(configured, b.Mode)
		if d.mode != configured {
			d.rule = b.Rule + " (recorded when first pushed)"
		}
	case !errors.Is(err, storage.ErrNotFound):
		return d, fmt.Errorf("%w: binding %s:%s: %v", ErrLedger, repo, tag, err)
	}
	return d, nil
}

// checkProtected refuses deleting d when a live immutable tag in repo points
// to it, directly, as an index child or as a blob. Tags on the upstream that
// the ledger has never seen are adopted first.
func (s *Server) checkProtected(ctx context.Context, h http.Header, repo string, d digest.Digest, reason string) error {
	if err := s.adoptRepo(ctx, h, repo); err != nil {
		return err
	}
	bs, err := s.ledger.Referencing(ctx, repo, d)
	if err != nil {
		return fmt.Errorf("%w: referencing %s: %v", ErrLedger, d, err)
	}
	for _, b := range bs {
		if b.Deleted {
			continue
		}
		configured, rule := s.im.ModeFor(repo, b.Tag)
		mode := policy.Effective(configured, b.Mode)
		if mode != configured {
			rule = b.Rule + " (recorded when first pushed)"
		}
		switch policy.DecideDelete(mode) {
		case policy.DeleteDeny:
			v := &Violation{Reason: reason, Repo: repo, Tag: b.Tag, Recorded: b.Digest, Attempted: d,
				PushedAt: b.PushedAt, PushedBy: b.PushedBy, Rule: rule, Mode: mode.String(),
				Hint: "Content an immutable tag points to stays; delete tags you own that are mutable, or let retention release it."}
			s.refuse(ctx, v)
			return v
		case policy.DeleteWarn:
			s.warnDelete(ctx, repo, b.Tag, b.Digest, rule)
		}
	}
	return nil
}

// send forwards a small request (a DELETE) and returns the upstream answer.
func (s *Server) send(ctx context.Context, r *http.Request, rt Route) (*http.Response, error) {
	out := r.Clone(context.WithoutCancel(ctx))
	out.URL = rt.URL()
	out.RequestURI = ""
	out.Body = http.NoBody
	out.ContentLength = 0
	resp, err := s.up.RoundTrip(out)
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s: %v", ErrLookup, r.Method, rt.Path(), err)
	}
	return resp, nil
}

// copyResponse relays a response from send.
func (s *Server) copyResponse(w http.ResponseWriter, resp *http.Response) error {
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
	return nil
}

// tombstone records that tags were deleted upstream. The bindings stay:
// an immutable one still binds its digest.
func (s *Server) tombstone(ctx context.Context, bs []storage.Binding) {
	if len(bs) == 0 {
		return
	}
	now := s.now()
	ri := info(ctx)
	events := make([]storage.Event, 0, len(bs))
	for i := range bs {
		bs[i].Deleted, bs[i].DeletedAt = true, now
		events = append(events, storage.Event{Time: now, Kind: storage.EventDeleted, Repo: bs[i].Repo, Tag: bs[i].Tag,
			Digest: bs[i].Digest, User: ri.user, RequestID: ri.id})
		s.audit.Info().Str("event", "deleted").Str("repo", bs[i].Repo).Str("tag", bs[i].Tag).Str("digest", bs[i].Digest.String()).
			Str("user", ri.user).Str("request_id", ri.id).Msg("tag deleted")
	}
	if err := s.ledger.Put(context.WithoutCancel(ctx), bs, events); err != nil {
		s.log.Error().Err(err).Msg("could not record deleted tags; the ledger still shows them live")
	}
}
