package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// Deletes, whoever makes them (a client through the registry API, or
// retention through Drift.Remove), take part in the same reservation
// protocol as pushes: each reserves what it removes in the ledger before it
// is decided and sent (Reservations.remove), so no push can bind a tag to
// content a delete is removing, and no delete can remove content a push in
// flight is binding. See storage.Reservation.

// deleteContent handles DELETE /v2/<name>/manifests/<digest> and
// DELETE /v2/<name>/blobs/<digest>. It first adopts the upstream's tags the
// ledger never saw, then is refused when a live immutable binding's graph
// holds the content, or, for a manifest, when the caller may not delete
// every tag the delete removes.
func (s *Server) deleteContent(w http.ResponseWriter, r *http.Request, rt Route) error {
	ctx := r.Context()
	reason := ReasonManifestDeleted
	if rt.Kind == KindBlob {
		reason = ReasonBlobDeleted
	}
	if err := s.adopter.adoptRepo(ctx, r.Header, rt.Name); err != nil {
		return err
	}
	var warns []storage.Binding
	resp, gone, err := s.reservations.remove(ctx, removal{repo: rt.Name, digest: rt.Digest, blob: rt.Kind == KindBlob,
		event: deleteEvent(ctx), auth: r.Header.Get("Authorization"),
		check: func(bs []storage.Binding) error {
			var err error
			if warns, err = checkProtected(ctx, s.states, s.audit, rt.Name, rt.Digest, reason, bs); err != nil {
				return err
			}
			if rt.Kind == KindManifest {
				return checkDeleteAccess(ctx, s.access, s.audit, rt.Name, rt.Digest, bs)
			}
			return nil
		},
		send: clientSend(s.upstream, r, rt)})
	if err != nil {
		return err
	}
	if resp.StatusCode/100 == 2 {
		for _, b := range warns {
			s.audit.warnDelete(ctx, rt.Name, b.Tag, b.Digest, s.states.of(rt.Name, b.Tag, &b).rule)
		}
	}
	s.audit.deleted(ctx, gone)
	return relay(w, resp, "", s.log)
}

// deleteTag handles DELETE /v2/<name>/manifests/<tag>: refused for an
// immutable tag whether or not the ledger knows it, otherwise reserved and
// forwarded, and the tag's binding marked deleted once the upstream removed
// it.
func (s *Server) deleteTag(w http.ResponseWriter, r *http.Request, rt Route) error {
	ctx := r.Context()
	for {
		st, err := s.states.read(ctx, rt.Name, rt.Tag)
		if err != nil {
			return err
		}
		verdict := policy.DecideDelete(st.mode)
		if verdict == policy.DeleteDeny {
			v := &Violation{Reason: ReasonTagDeleted, Repo: rt.Name, Tag: rt.Tag, Recorded: st.bound,
				PushedAt: st.current.PushedAt, PushedBy: st.current.PushedBy, Rule: st.rule, Mode: st.mode.String(),
				Hint: "Immutable tags are never deleted through the registry API; retention can release them by policy."}
			s.audit.refuse(ctx, v)
			return v
		}
		resp, gone, err := s.reservations.remove(ctx, removal{repo: rt.Name, tag: rt.Tag, digest: st.current.Digest, expect: st.seen(),
			event: deleteEvent(ctx), auth: r.Header.Get("Authorization"), send: clientSend(s.upstream, r, rt)})
		if errors.Is(err, storage.ErrChanged) {
			continue // a push changed the binding in between: decide again
		}
		if err != nil {
			return err
		}
		if verdict == policy.DeleteWarn && resp.StatusCode/100 == 2 {
			s.audit.warnDelete(ctx, rt.Name, rt.Tag, st.bound, st.rule)
		}
		s.audit.deleted(ctx, gone)
		return relay(w, resp, "", s.log)
	}
}

// checkProtected refuses deleting d when a live immutable binding in repo
// points to it, directly, as an index child or as a blob. It returns the
// live warn-mode bindings that reference d, whose loss is to be reported.
func checkProtected(ctx context.Context, sts states, audit auditor, repo string, d digest.Digest, reason string, bs []storage.Binding) ([]storage.Binding, error) {
	var warns []storage.Binding
	for _, b := range bs {
		if b.Deleted {
			continue
		}
		st := sts.of(repo, b.Tag, &b)
		switch policy.DecideDelete(st.mode) {
		case policy.DeleteDeny:
			v := &Violation{Reason: reason, Repo: repo, Tag: b.Tag, Recorded: b.Digest, Attempted: d,
				PushedAt: b.PushedAt, PushedBy: b.PushedBy, Rule: st.rule, Mode: st.mode.String(),
				Hint: "Content an immutable tag points to stays; delete tags you own that are mutable, or let retention release it."}
			audit.refuse(ctx, v)
			return nil, v
		case policy.DeleteWarn:
			warns = append(warns, b)
		}
	}
	return warns, nil
}

// checkDeleteAccess refuses a delete by digest unless the caller may delete
// every tag it would remove: every live binding of repo bound to d.
func checkDeleteAccess(ctx context.Context, access policy.Access, audit auditor, repo string, d digest.Digest, bs []storage.Binding) error {
	if !access.Enabled {
		return nil
	}
	ri := info(ctx)
	for _, b := range bs {
		if b.Deleted || b.Digest != d {
			continue
		}
		dec := access.Decide(policy.AccessRequest{Identity: ri.identity, Action: policy.Delete, Repo: repo, Tag: b.Tag})
		if dec.Allowed {
			continue
		}
		e := &accessDenied{action: policy.Delete, repo: repo, tag: b.Tag, rule: dec.Rule, identity: ri.identity,
			reason: fmt.Sprintf("deleting %s@%s would remove tag %q, and %s", repo, d, b.Tag, dec.Reason)}
		audit.refuseAccess(ctx, e)
		return e
	}
	return nil
}

// deleteEvent is the template of the history events a client's delete
// records.
func deleteEvent(ctx context.Context) storage.Event {
	ri := info(ctx)
	return storage.Event{Kind: storage.EventDeleted, User: ri.user, RequestID: ri.id}
}

// clientSend sends a client's DELETE on the rebuilt URL, with its headers.
func clientSend(up Upstream, r *http.Request, rt Route) func(context.Context, time.Time) (*http.Response, error) {
	return func(ctx context.Context, deadline time.Time) (*http.Response, error) {
		return send(ctx, up, r.Method, rt.URL(), r.Header, r.Host, nil, deadline)
	}
}
