package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// Deletes, whoever makes them (a client through the registry API, or
// retention), take part in the same reservation protocol as pushes: each
// reserves what it removes in the ledger before it is decided and sent, so
// no push can bind a tag to content a delete is removing, and no delete can
// remove content a push in flight is binding. See storage.Reservation.

// deleteManifest handles DELETE /v2/<name>/manifests/<tag|digest>.
func (s *Server) deleteManifest(w http.ResponseWriter, r *http.Request, rt Route) error {
	ctx := r.Context()
	if rt.Tag != "" {
		return s.deleteTag(w, r, rt)
	}
	if err := s.adoptRepo(ctx, r.Header, rt.Name); err != nil {
		return err
	}
	var warns []storage.Binding
	resp, gone, err := s.remove(ctx, removal{repo: rt.Name, digest: rt.Digest, event: s.deleteEvent(ctx), auth: r.Header.Get("Authorization"),
		check: func(bs []storage.Binding) error {
			var err error
			warns, err = s.checkProtected(ctx, rt.Name, rt.Digest, ReasonManifestDeleted, bs)
			if err != nil {
				return err
			}
			return s.checkDeleteAccess(ctx, rt.Name, rt.Digest, bs)
		},
		send: s.sender(r, rt)})
	if err != nil {
		return err
	}
	if resp.StatusCode/100 == 2 {
		for _, b := range warns {
			s.warnDelete(ctx, rt.Name, b.Tag, b.Digest, s.stateOf(rt.Name, b.Tag, &b).rule)
		}
	}
	s.auditDeleted(ctx, gone)
	return s.copyResponse(w, resp)
}

// deleteTag handles DELETE /v2/<name>/manifests/<tag>: refused for an
// immutable tag whether or not the ledger knows it, otherwise reserved and
// forwarded, and the tag's binding marked deleted once the upstream removed
// it.
func (s *Server) deleteTag(w http.ResponseWriter, r *http.Request, rt Route) error {
	ctx := r.Context()
	for {
		st, err := s.readState(ctx, rt.Name, rt.Tag)
		if err != nil {
			return err
		}
		verdict := policy.DecideDelete(st.mode)
		if verdict == policy.DeleteDeny {
			v := &Violation{Reason: ReasonTagDeleted, Repo: rt.Name, Tag: rt.Tag, Recorded: st.bound,
				PushedAt: st.current.PushedAt, PushedBy: st.current.PushedBy, Rule: st.rule, Mode: st.mode.String(),
				Hint: "Immutable tags are never deleted through the registry API; retention can release them by policy."}
			s.refuse(ctx, v)
			return v
		}
		resp, gone, err := s.remove(ctx, removal{repo: rt.Name, tag: rt.Tag, digest: st.current.Digest, expect: st.seen(),
			event: s.deleteEvent(ctx), auth: r.Header.Get("Authorization"), send: s.sender(r, rt)})
		if errors.Is(err, storage.ErrChanged) {
			continue // a push changed the binding in between: decide again
		}
		if err != nil {
			return err
		}
		if verdict == policy.DeleteWarn && resp.StatusCode/100 == 2 {
			s.warnDelete(ctx, rt.Name, rt.Tag, st.bound, st.rule)
		}
		s.auditDeleted(ctx, gone)
		return s.copyResponse(w, resp)
	}
}

// deleteBlob handles DELETE /v2/<name>/blobs/<digest>.
func (s *Server) deleteBlob(w http.ResponseWriter, r *http.Request, rt Route) error {
	ctx := r.Context()
	if err := s.adoptRepo(ctx, r.Header, rt.Name); err != nil {
		return err
	}
	var warns []storage.Binding
	resp, _, err := s.remove(ctx, removal{repo: rt.Name, digest: rt.Digest, blob: true, event: s.deleteEvent(ctx), auth: r.Header.Get("Authorization"),
		check: func(bs []storage.Binding) error {
			var err error
			warns, err = s.checkProtected(ctx, rt.Name, rt.Digest, ReasonBlobDeleted, bs)
			return err
		},
		send: s.sender(r, rt)})
	if err != nil {
		return err
	}
	if resp.StatusCode/100 == 2 {
		for _, b := range warns {
			s.warnDelete(ctx, rt.Name, b.Tag, b.Digest, s.stateOf(rt.Name, b.Tag, &b).rule)
		}
	}
	return s.copyResponse(w, resp)
}

// checkProtected refuses deleting d when a live immutable binding in repo
// points to it, directly, as an index child or as a blob. It returns the
// live warn-mode bindings that reference d, whose loss is to be reported.
func (s *Server) checkProtected(ctx context.Context, repo string, d digest.Digest, reason string, bs []storage.Binding) ([]storage.Binding, error) {
	var warns []storage.Binding
	for _, b := range bs {
		if b.Deleted {
			continue
		}
		st := s.stateOf(repo, b.Tag, &b)
		switch policy.DecideDelete(st.mode) {
		case policy.DeleteDeny:
			v := &Violation{Reason: reason, Repo: repo, Tag: b.Tag, Recorded: b.Digest, Attempted: d,
				PushedAt: b.PushedAt, PushedBy: b.PushedBy, Rule: st.rule, Mode: st.mode.String(),
				Hint: "Content an immutable tag points to stays; delete tags you own that are mutable, or let retention release it."}
			s.refuse(ctx, v)
			return nil, v
		case policy.DeleteWarn:
			warns = append(warns, b)
		}
	}
	return warns, nil
}

// checkDeleteAccess refuses a delete by digest unless the caller may delete
// every tag it would remove: every live binding of repo bound to d.
func (s *Server) checkDeleteAccess(ctx context.Context, repo string, d digest.Digest, bs []storage.Binding) error {
	if !s.access.Enabled {
		return nil
	}
	ri := info(ctx)
	for _, b := range bs {
		if b.Deleted || b.Digest != d {
			continue
		}
		dec := s.access.Decide(policy.AccessRequest{Identity: ri.identity, Action: policy.Delete, Repo: repo, Tag: b.Tag})
		if dec.Allowed {
			continue
		}
		e := &accessDenied{action: policy.Delete, repo: repo, tag: b.Tag, rule: dec.Rule, identity: ri.identity,
			reason: fmt.Sprintf("deleting %s@%s would remove tag %q, and %s", repo, d, b.Tag, dec.Reason)}
		s.auditAccess(ctx, e)
		return e
	}
	return nil
}

// removal is one delete of a tag, a manifest or a blob.
type removal struct {
	repo string
	// tag is set for a delete by tag.
	tag string
	// digest is the manifest or blob deleted, or the digest the tag is
	// bound to ("" when the ledger has no binding for it).
	digest digest.Digest
	blob   bool
	// expect is, for a delete by tag, the binding the delete was decided
	// on; a change makes remove return an error wrapping
	// storage.ErrChanged.
	expect storage.Seen
	// mode is, for a delete by tag, the mode its tombstone records; ""
	// keeps the binding's.
	mode string
	// check, when set, decides the delete once the reservation holds, on
	// every binding of repo that references digest; an error refuses it.
	check func([]storage.Binding) error
	// send makes the upstream request, giving up at deadline.
	send func(ctx context.Context, deadline time.Time) (*http.Response, error)
	// event is the template of the history events of what it removes.
	event storage.Event
	// auth is the client's Authorization, which the settler asks the
	// upstream with if the outcome is unknown; "" for none.
	auth string
}

// remove runs one delete under a delete reservation: it reserves what the
// delete removes (waiting while a push or another delete holds it), decides
// it with check on bindings no push can change meanwhile, sends it, and
// records what the upstream removed in the transaction that ends the
// reservation. A 2xx or a 404 (already gone) marks the removed tags deleted;
// another answer releases the reservation; no answer, or a 5xx, leaves it to
// the settler. It returns the upstream's answer and the bindings marked
// deleted.
func (s *Server) remove(ctx context.Context, rm removal) (*http.Response, []storage.Binding, error) {
	if err := s.writable(); err != nil {
		return nil, nil, err
	}
	id, err := storage.NewReservationID()
	if err != nil {
		return nil, nil, err
	}
	s.inflight.Store(id, struct{}{})
	if rm.auth != "" {
		s.creds.Store(id, rm.auth)
	}
	defer s.done(id)
	res := storage.Reservation{ID: id, Kind: storage.ReserveDelete, Repo: rm.repo, Digest: rm.digest, Blob: rm.blob,
		Mode: rm.mode, Owner: s.owner, User: rm.event.User}
	if rm.tag != "" {
		res.Tags, res.Expect = []string{rm.tag}, map[string]storage.Seen{rm.tag: rm.expect}
	}
	wait := s.waiter()
	for {
		res.Deadline = s.now().Add(s.timeout)
		got, err := s.ledger.Reserve(ctx, res)
		if err == nil {
			res = got
			break
		}
		if errors.Is(err, storage.ErrChanged) {
			return nil, nil, err
		}
		if err := wait(ctx, err); err != nil {
			return nil, nil, err
		}
	}
	if rm.check != nil {
		bs, err := s.ledger.Referencing(ctx, rm.repo, rm.digest)
		if err == nil {
			err = rm.check(bs)
		} else {
			err = fmt.Errorf("%w: referencing %s: %v", ErrLedger, rm.digest, err)
		}
		if err != nil {
			s.releaseOrLog(res.ID)
			return nil, nil, err
		}
	}
	resp, err := rm.send(ctx, res.Deadline)
	if err != nil {
		s.settleLater(res)
		return nil, nil, &unknownOutcome{op: "delete of " + describe(res), err: err}
	}
	switch {
	case resp.StatusCode/100 == 2 || resp.StatusCode == http.StatusNotFound:
		ev := rm.event
		ev.Time = s.now()
		gone, err := s.ledger.CommitDelete(ctx, res.ID, ev)
		if err != nil {
			drain(resp)
			s.stuck(res)
			return nil, nil, &unrecorded{op: "delete of " + describe(res), err: err}
		}
		return resp, gone, nil
	case resp.StatusCode >= 500:
		// It may have deleted before failing.
		s.settleLater(res)
		defer drain(resp)
		return nil, nil, &unknownOutcome{op: "delete of " + describe(res), err: upstreamFailure(resp), answered: true}
	default:
		s.releaseOrLog(res.ID)
	}
	return resp, nil, nil
}

// describe names what a reservation is for, in messages.
func describe(res storage.Reservation) string {
	switch {
	case len(res.Tags) > 0:
		return res.Repo + ":" + strings.Join(res.Tags, ",")
	case res.Blob:
		return "blob " + res.Repo + "@" + res.Digest.String()
	}
	return res.Repo + "@" + res.Digest.String()
}

// sender forwards a client's DELETE on the rebuilt URL, with its
// credentials, giving up at deadline.
func (s *Server) sender(r *http.Request, rt Route) func(context.Context, time.Time) (*http.Response, error) {
	return func(ctx context.Context, deadline time.Time) (*http.Response, error) {
		ctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
		out := r.Clone(ctx)
		out.URL = rt.URL()
		out.RequestURI = ""
		out.Body = http.NoBody
		out.ContentLength = 0
		resp, err := s.up.RoundTrip(out)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("%w: %s %s: %v", ErrLookup, r.Method, rt.Path(), err)
		}
		resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
		return resp, nil
	}
}

// deleteEvent is the template of the history events a client's delete
// records.
func (s *Server) deleteEvent(ctx context.Context) storage.Event {
	ri := info(ctx)
	return storage.Event{Kind: storage.EventDeleted, User: ri.user, RequestID: ri.id}
}

// auditDeleted writes one audit line per binding a delete marked deleted.
func (s *Server) auditDeleted(ctx context.Context, bs []storage.Binding) {
	ri := info(ctx)
	for _, b := range bs {
		s.audit.Info().Str("event", "deleted").Str("repo", b.Repo).Str("tag", b.Tag).Str("digest", b.Digest.String()).
			Str("user", ri.user).Str("request_id", ri.id).Msg("tag deleted")
	}
}

// copyResponse relays an upstream answer taglock read itself.
func (s *Server) copyResponse(w http.ResponseWriter, resp *http.Response) error {
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
	return nil
}

// Removal is a delete taglock makes on its own behalf (retention): of a tag
// when Tag is set, otherwise of the manifest Digest. It runs under the same
// reservations as the registry API's deletes.
type Removal struct {
	Repo string
	// Tag is the tag to delete; empty deletes the manifest Digest.
	Tag string
	// Digest is the manifest to delete, or the digest Tag is bound to.
	Digest digest.Digest
	// Expect is, for a tag, the binding the caller decided on: a push that
	// changed it since makes Remove return an error wrapping
	// storage.ErrChanged, and nothing is deleted.
	Expect storage.Seen
	// Mode is, for a tag, the mode its tombstone records ("" keeps the
	// binding's): retention records the mode that governed the release,
	// so a released immutable tag stays bound.
	Mode string
	// Check, when set, is called for a manifest with every binding of
	// Repo that references Digest, once nothing can change them; an error
	// stops the delete and is returned.
	Check func([]storage.Binding) error
	// Event is the template of the history events of the tags removed.
	Event storage.Event
}

// RemoveResult is what Remove did.
type RemoveResult struct {
	// Found is false when the upstream no longer had it.
	Found bool
	// Deleted are the bindings marked deleted.
	Deleted []storage.Binding
}

// Remove deletes a tag or a manifest from the upstream under a delete
// reservation, with taglock's own credentials, and records what it removed.
// While a push holds the tag, or holds the manifest as part of its graph,
// Remove waits for it up to the configured reserve wait and then returns an
// error wrapping storage.ErrBusy. An upstream answer other than 2xx or 404
// is an error; so is no answer, whose outcome the settler then finds out
// (the error wraps ErrUnknownOutcome).
func (s *Server) Remove(ctx context.Context, rm Removal) (RemoveResult, error) {
	ref := rm.Digest.String()
	if rm.Tag != "" {
		ref = rm.Tag
	}
	send := func(ctx context.Context, deadline time.Time) (*http.Response, error) {
		ctx, cancel := context.WithDeadline(ctx, deadline)
		req, err := newRequest(ctx, http.MethodDelete, &url.URL{Path: "/v2/" + rm.Repo + "/manifests/" + ref}, nil, http.Header{})
		if err != nil {
			cancel()
			return nil, err
		}
		resp, err := s.up.RoundTrip(req)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("%w: DELETE %s/manifests/%s: %v", ErrLookup, rm.Repo, ref, err)
		}
		resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
		return resp, nil
	}
	ev := rm.Event
	if ev.Kind == "" {
		ev.Kind = storage.EventDeleted
	}
	resp, gone, err := s.remove(ctx, removal{repo: rm.Repo, tag: rm.Tag, digest: rm.Digest, expect: rm.Expect, mode: rm.Mode,
		check: rm.Check, send: send, event: ev})
	if err != nil {
		return RemoveResult{}, err
	}
	defer drain(resp)
	switch {
	case resp.StatusCode/100 == 2:
		return RemoveResult{Found: true, Deleted: gone}, nil
	case resp.StatusCode == http.StatusNotFound:
		return RemoveResult{Deleted: gone}, nil
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	return RemoveResult{}, fmt.Errorf("upstream answered DELETE %s/manifests/%s with %d: %s", rm.Repo, ref, resp.StatusCode, msg)
}
