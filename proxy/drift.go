package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// Drift compares the ledger with the upstream and keeps them in step, for
// the operator tools and for retention: ImportTags adopts what the upstream
// already holds, Verify finds writes that went around taglock, Repair puts
// immutable tags back, the Upstream methods read the upstream directly, and
// Remove deletes under the same reservations as the registry API. It needs
// no HTTP handler: the commands build one without serving.
type Drift struct {
	upstream     Upstream
	read         reader
	ledger       Ledger
	states       states
	adopter      adopter
	reservations *Reservations
	audit        auditor
	log          zerolog.Logger
	now          func() time.Time
	timeout      time.Duration
}

// UpstreamRepositories lists every repository in the upstream's catalog.
func (d *Drift) UpstreamRepositories(ctx context.Context) ([]string, error) {
	return d.read.catalog(ctx, newLimiter(0))
}

// UpstreamTags lists every tag of repo on the upstream; a repository the
// upstream does not know has none.
func (d *Drift) UpstreamTags(ctx context.Context, repo string) ([]string, error) {
	return d.read.tags(ctx, newLimiter(0), repo)
}

// UpstreamManifest reads manifest ref (a tag or a digest) of repo from the
// upstream with the full Accept list. found is false on a 404.
func (d *Drift) UpstreamManifest(ctx context.Context, repo, ref string) (body []byte, mediaType string, found bool, err error) {
	return d.read.manifest(ctx, http.Header{}, repo, ref)
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
	// Mode is, for a tag, the mode its tombstone records (nil keeps the
	// binding's): retention records the mode that governed the release,
	// so a released immutable tag stays bound.
	Mode *policy.Mode
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
func (d *Drift) Remove(ctx context.Context, rm Removal) (RemoveResult, error) {
	ref := rm.Digest.String()
	if rm.Tag != "" {
		ref = rm.Tag
	}
	u := &url.URL{Path: "/v2/" + rm.Repo + "/manifests/" + ref}
	sendDelete := func(ctx context.Context, deadline time.Time) (*http.Response, error) {
		return send(ctx, d.upstream, http.MethodDelete, u, http.Header{}, "", nil, deadline)
	}
	ev := rm.Event
	if ev.Kind == "" {
		ev.Kind = storage.EventDeleted
	}
	resp, gone, err := d.reservations.remove(ctx, removal{repo: rm.Repo, tag: rm.Tag, digest: rm.Digest, expect: rm.Expect, mode: rm.Mode,
		check: rm.Check, send: sendDelete, event: ev})
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

// toolContext labels the ledger events a tool records with its name.
func toolContext(ctx context.Context, user string) context.Context {
	if _, ok := ctx.Value(ctxKey{}).(*reqInfo); ok {
		return ctx
	}
	return context.WithValue(ctx, ctxKey{}, &reqInfo{user: user})
}

// limiter spaces taglock's own upstream requests; the zero rate never waits.
type limiter struct {
	t *time.Ticker
}

func newLimiter(rate float64) *limiter {
	if rate <= 0 {
		return &limiter{}
	}
	return &limiter{t: time.NewTicker(time.Duration(float64(time.Second) / rate))}
}

func (l *limiter) wait(ctx context.Context) error {
	if l.t == nil {
		return ctx.Err()
	}
	select {
	case <-l.t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *limiter) stop() {
	if l.t != nil {
		l.t.Stop()
	}
}
