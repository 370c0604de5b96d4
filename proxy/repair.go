package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/taglock/taglock/storage"
)

// Repair outcomes.
const (
	RepairRestored = "restored" // the recorded manifest is back under the tag
	RepairSkipped  = "skipped"  // not an immutable moved or deleted tag
	RepairFailed   = "failed"   // see Error
	// RepairUnknown means the upstream did not answer the restore: it may
	// still land. The tag stays held until taglock finds out; verify again.
	RepairUnknown = "unknown"
)

// RepairResult is what Repair did for one finding.
type RepairResult struct {
	Finding Finding `json:"finding"`
	Outcome string  `json:"outcome"` // RepairRestored, RepairSkipped, RepairFailed or RepairUnknown
	Error   string  `json:"error,omitempty"`
}

// Repair puts every moved or deleted immutable tag among findings back on
// its recorded digest by PUTting the manifest bytes the ledger kept. The
// blobs must still be on the upstream; when they are not, the upstream
// refuses and the result says so. Each restore is recorded in the history.
// Other findings are skipped. The error is for the ledger or the context;
// per-tag failures are in the results.
func (d *Drift) Repair(ctx context.Context, findings []Finding) ([]RepairResult, error) {
	ctx = toolContext(ctx, "taglock verify --repair")
	out := make([]RepairResult, 0, len(findings))
	for _, f := range findings {
		if !f.Immutable || (f.Kind != DriftMoved && f.Kind != DriftDeleted) {
			out = append(out, RepairResult{Finding: f, Outcome: RepairSkipped})
			continue
		}
		if err := d.repairOne(ctx, f); err != nil {
			switch {
			case errors.Is(err, ErrLedger) || ctx.Err() != nil:
				return out, err
			case errors.Is(err, ErrUnknownOutcome):
				out = append(out, RepairResult{Finding: f, Outcome: RepairUnknown, Error: err.Error()})
			default:
				out = append(out, RepairResult{Finding: f, Outcome: RepairFailed, Error: err.Error()})
			}
			continue
		}
		out = append(out, RepairResult{Finding: f, Outcome: RepairRestored})
	}
	return out, nil
}

func (d *Drift) repairOne(ctx context.Context, f Finding) error {
	b, err := d.ledger.Binding(ctx, f.Repo, f.Tag)
	if err != nil {
		return fmt.Errorf("%w: binding %s:%s: %v", ErrLedger, f.Repo, f.Tag, err)
	}
	if len(b.Manifest) == 0 {
		return fmt.Errorf("the ledger kept no manifest bytes for %s:%s", f.Repo, f.Tag)
	}
	if got := b.Digest.Algorithm().FromBytes(b.Manifest); got != b.Digest {
		return fmt.Errorf("the stored manifest of %s:%s has digest %s, not the recorded %s", f.Repo, f.Tag, got, b.Digest)
	}
	mediaType := b.MediaType
	if mediaType == "" {
		refs, err := parseManifest("", b.Manifest)
		if err != nil {
			return fmt.Errorf("stored manifest of %s:%s: %v", f.Repo, f.Tag, err)
		}
		mediaType = refs.MediaType
	}
	// The restore is a push of the recorded digest: it holds the tag and
	// its closure like one, so no delete of them runs meanwhile, and an
	// answer that does not come is settled like a push's.
	id, err := d.reservations.claim("")
	if err != nil {
		return err
	}
	defer d.reservations.done(id)
	ri := info(ctx)
	res, err := d.ledger.Reserve(ctx, storage.Reservation{ID: id, Repo: f.Repo, Tags: []string{f.Tag}, Digest: b.Digest, Closure: b.Closure,
		Deadline: d.now().Add(d.timeout), Owner: d.reservations.owner, User: ri.user, Expect: map[string]storage.Seen{f.Tag: b.Seen()}})
	switch {
	case errors.Is(err, storage.ErrBusy), errors.Is(err, storage.ErrChanged):
		return fmt.Errorf("%s:%s changed or is being written meanwhile (%v); verify again", f.Repo, f.Tag, err)
	case err != nil:
		return fmt.Errorf("%w: reserve %s:%s: %v", ErrLedger, f.Repo, f.Tag, err)
	}
	resp, err := send(ctx, d.upstream, http.MethodPut, &url.URL{Path: "/v2/" + f.Repo + "/manifests/" + f.Tag},
		http.Header{"Content-Type": {mediaType}}, "", b.Manifest, res.Deadline)
	if err != nil {
		d.reservations.handOver(res)
		return &unknownOutcome{op: "restore of " + f.Repo + ":" + f.Tag, err: err}
	}
	defer drain(resp)
	switch {
	case resp.StatusCode >= 500:
		d.reservations.handOver(res)
		return &unknownOutcome{op: "restore of " + f.Repo + ":" + f.Tag, err: fmt.Errorf("the upstream answered %d", resp.StatusCode), answered: true}
	case resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK:
		d.reservations.releaseOrLog(res.ID)
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("upstream refused PUT %s:%s with %d: %s", f.Repo, f.Tag, resp.StatusCode, msg)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != b.Digest.String() {
		d.log.Warn().Str("computed", b.Digest.String()).Str("upstream", got).Msg("repair: upstream reported a different manifest digest")
	}
	ev := storage.Event{Time: d.now(), Kind: storage.EventRestored, Repo: f.Repo, Tag: f.Tag, Digest: b.Digest,
		Previous: f.Actual, User: ri.user, Rule: b.Rule, Reason: "drift-" + f.Kind,
		Message: fmt.Sprintf("repair: the tag was %s on the upstream around taglock; the recorded manifest was put back", f.Kind)}
	if err := d.ledger.Commit(context.WithoutCancel(ctx), res.ID, []storage.Binding{b}, []storage.Event{ev}); err != nil {
		d.reservations.stuck(res)
		return fmt.Errorf("%w: record repair of %s:%s: %v", ErrLedger, f.Repo, f.Tag, err)
	}
	d.audit.audit.Warn().Str("event", "repaired").Str("repo", f.Repo).Str("tag", f.Tag).Str("recorded", b.Digest.String()).
		Str("actual", f.Actual.String()).Str("drift", f.Kind).Msg("restored an immutable tag that drifted on the upstream")
	return nil
}
