package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// This file holds the operator tools built on the proxy's upstream helpers:
// ImportTags adopts what the upstream already holds, Verify finds writes
// that went around taglock, and Repair puts immutable tags back.

// ImportOptions configures ImportTags.
type ImportOptions struct {
	// Repositories limits the walk to repositories matching these globs;
	// empty means every repository in the upstream's catalog.
	Repositories policy.Globs
	// Rate caps taglock's upstream requests per second; zero means no cap.
	Rate float64
	// Progress, when not nil, is called after each tag is handled.
	Progress func(ImportProgress)
}

// ImportProgress is the state of a running import.
type ImportProgress struct {
	Repository string `json:"repository"`
	Tag        string `json:"tag"`
	// Done counts the tags handled so far in all repositories; Total
	// counts the tags listed so far (it grows as repositories are listed).
	Done  int `json:"done"`
	Total int `json:"total"`
}

// ImportReport is what ImportTags did.
type ImportReport struct {
	Repositories int `json:"repositories"` // repositories walked
	Tags         int `json:"tags"`         // tags seen upstream
	Adopted      int `json:"adopted"`      // bindings recorded
	Skipped      int `json:"skipped"`      // tags the ledger already had
	Vanished     int `json:"vanished"`     // tags listed but gone before they were read
}

// ImportTags records a binding for every upstream tag the ledger has never
// seen, in the mode the configuration gives it, with the digest computed
// from the manifest bytes. Tags already in the ledger (tombstones included)
// are skipped, so running it again, or after an interruption, only does
// what is left.
func (s *Server) ImportTags(ctx context.Context, o ImportOptions) (ImportReport, error) {
	ctx = toolContext(ctx, "taglock import")
	lim := newLimiter(o.Rate)
	defer lim.stop()
	var rep ImportReport
	repos, err := s.catalog(ctx, lim)
	if err != nil {
		return rep, err
	}
	for _, repo := range repos {
		if len(o.Repositories) > 0 && !o.Repositories.Match(repo) {
			continue
		}
		tags, err := s.allTags(ctx, lim, repo)
		if err != nil {
			return rep, err
		}
		rep.Repositories++
		total := rep.Tags + len(tags)
		for _, tag := range tags {
			rep.Tags++
			if _, err := s.ledger.Binding(ctx, repo, tag); err == nil {
				rep.Skipped++
			} else if !errors.Is(err, storage.ErrNotFound) {
				return rep, fmt.Errorf("%w: binding %s:%s: %v", ErrLedger, repo, tag, err)
			} else {
				if err := lim.wait(ctx); err != nil {
					return rep, err
				}
				mode, rule := s.im.ModeFor(repo, tag)
				_, found, err := s.adopt(ctx, http.Header{}, repo, tag, mode, rule)
				if err != nil {
					return rep, fmt.Errorf("import %s:%s: %w", repo, tag, err)
				}
				if found {
					rep.Adopted++
				} else {
					rep.Vanished++
				}
			}
			if o.Progress != nil {
				o.Progress(ImportProgress{Repository: repo, Tag: tag, Done: rep.Tags, Total: total})
			}
		}
	}
	return rep, nil
}

// Drift kinds.
const (
	DriftMoved   = "moved"   // the upstream tag holds another digest than the ledger
	DriftDeleted = "deleted" // the ledger binds the tag; the upstream no longer has it
	DriftNew     = "new"     // the upstream has a tag the ledger never recorded
	// DriftIncomplete means the upstream still has the tag on its recorded
	// digest, but not everything that digest references: a child manifest
	// or blob of its closure is gone, so the tag no longer pulls.
	DriftIncomplete = "incomplete"
)

// Finding is one tag whose upstream state differs from the ledger.
type Finding struct {
	Repo string `json:"repo"`
	Tag  string `json:"tag"`
	Kind string `json:"kind"` // DriftMoved, DriftDeleted or DriftNew
	// Mode is the mode that governs the tag: the recorded one for a bound
	// immutable tag, the configured one otherwise.
	Mode     string        `json:"mode"`
	Recorded digest.Digest `json:"recorded,omitempty"` // the ledger's digest ("" for new tags)
	Actual   digest.Digest `json:"actual,omitempty"`   // the upstream's digest ("" for deleted tags)
	// Missing lists, for an incomplete tag, the digests of its closure the
	// upstream no longer has.
	Missing []digest.Digest `json:"missing,omitempty"`
	// Immutable is true for a moved or deleted tag whose mode is
	// immutable: a tag taglock promised would not change.
	Immutable bool `json:"immutable"`
	// Repairable is true when Immutable, moved or deleted, and the ledger
	// kept the manifest bytes, so Repair can put them back. Missing blobs
	// are never repairable: the ledger keeps manifests, not blobs.
	Repairable bool `json:"repairable"`
}

// VerifyOptions configures Verify.
type VerifyOptions struct {
	// Repositories limits the check to repositories matching these globs;
	// empty means every repository in the upstream's catalog or the ledger.
	Repositories policy.Globs
	// Rate caps upstream requests per second; zero means no cap.
	Rate float64
}

// VerifyReport is the result of Verify.
type VerifyReport struct {
	Repositories int       `json:"repositories"` // repositories compared
	Tags         int       `json:"tags"`         // tags compared (upstream and ledger, counted once)
	Findings     []Finding `json:"findings"`     // sorted by repository, then tag
}

// ImmutableDrift reports whether any finding concerns an immutable tag.
func (r VerifyReport) ImmutableDrift() bool {
	return slices.ContainsFunc(r.Findings, func(f Finding) bool { return f.Immutable })
}

// Verify compares every tag of the upstream with the ledger and reports the
// differences: writes and deletes that went around taglock. It changes
// nothing.
func (s *Server) Verify(ctx context.Context, o VerifyOptions) (VerifyReport, error) {
	ctx = toolContext(ctx, "taglock verify")
	lim := newLimiter(o.Rate)
	defer lim.stop()
	var rep VerifyReport
	upRepos, err := s.catalog(ctx, lim)
	if err != nil {
		return rep, err
	}
	known, err := s.ledger.Repositories(ctx)
	if err != nil {
		return rep, fmt.Errorf("%w: repositories: %v", ErrLedger, err)
	}
	repos := append(slices.Clone(upRepos), known...)
	slices.Sort(repos)
	repos = slices.Compact(repos)
	rep.Findings = []Finding{}
	for _, repo := range repos {
		if len(o.Repositories) > 0 && !o.Repositories.Match(repo) {
			continue
		}
		n, found, err := s.verifyRepo(ctx, lim, repo)
		if err != nil {
			return rep, err
		}
		rep.Repositories++
		rep.Tags += n
		rep.Findings = append(rep.Findings, found...)
	}
	return rep, nil
}

// verifyRepo compares one repository and returns how many tags it compared
// and the findings, sorted by tag.
func (s *Server) verifyRepo(ctx context.Context, lim *limiter, repo string) (int, []Finding, error) {
	tags, err := s.allTags(ctx, lim, repo)
	if err != nil {
		return 0, nil, err
	}
	bindings, err := s.ledger.Bindings(ctx, repo)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: bindings of %s: %v", ErrLedger, repo, err)
	}
	bound := make(map[string]storage.Binding, len(bindings))
	for _, b := range bindings {
		bound[b.Tag] = b
	}
	upstream := make(map[string]bool, len(tags))
	var out []Finding
	present := map[digest.Digest]bool{} // what the upstream still has, asked once per repository
	for _, tag := range tags {
		upstream[tag] = true
		if err := lim.wait(ctx); err != nil {
			return 0, nil, err
		}
		body, _, found, err := s.getManifest(ctx, http.Header{}, repo, tag)
		if err != nil {
			return 0, nil, fmt.Errorf("verify %s:%s: %w", repo, tag, err)
		}
		if !found {
			upstream[tag] = false // listed, then gone: judged below as absent
			continue
		}
		actual := digest.FromBytes(body)
		b, ok := bound[tag]
		switch {
		case !ok:
			mode, _ := s.im.ModeFor(repo, tag)
			out = append(out, Finding{Repo: repo, Tag: tag, Kind: DriftNew, Mode: mode.String(), Actual: actual})
		case b.Digest != actual:
			out = append(out, s.finding(b, DriftMoved, actual))
		case !b.Deleted:
			missing, err := s.missing(ctx, lim, repo, b.Closure, present)
			if err != nil {
				return 0, nil, fmt.Errorf("verify %s:%s: %w", repo, tag, err)
			}
			if len(missing) > 0 {
				f := s.finding(b, DriftIncomplete, actual)
				f.Missing, f.Repairable = missing, false
				out = append(out, f)
			}
		}
	}
	for _, b := range bindings {
		if !upstream[b.Tag] && !b.Deleted {
			out = append(out, s.finding(b, DriftDeleted, ""))
		}
	}
	slices.SortFunc(out, func(a, b Finding) int { return strings.Compare(a.Tag, b.Tag) })
	n := len(upstream)
	for _, b := range bindings {
		if _, seen := upstream[b.Tag]; !seen {
			n++
		}
	}
	return n, out, nil
}

// finding describes a bound tag that drifted.
func (s *Server) finding(b storage.Binding, kind string, actual digest.Digest) Finding {
	st := s.stateOf(b.Repo, b.Tag, &b)
	f := Finding{Repo: b.Repo, Tag: b.Tag, Kind: kind, Mode: st.mode.String(), Recorded: b.Digest, Actual: actual,
		Immutable: st.mode == policy.Immutable}
	f.Repairable = f.Immutable && len(b.Manifest) > 0
	return f
}

// missing returns the digests of closure the upstream no longer has in
// repo, as a blob or as a manifest. present caches answers across tags.
func (s *Server) missing(ctx context.Context, lim *limiter, repo string, closure []digest.Digest, present map[digest.Digest]bool) ([]digest.Digest, error) {
	var out []digest.Digest
	for _, d := range closure {
		has, known := present[d]
		if !known {
			for _, path := range []string{"/v2/" + repo + "/blobs/" + d.String(), "/v2/" + repo + "/manifests/" + d.String()} {
				if err := lim.wait(ctx); err != nil {
					return nil, err
				}
				gone, err := s.absent(ctx, path)
				if err != nil {
					return nil, err
				}
				if has = !gone; has {
					break
				}
			}
			present[d] = has
		}
		if !has {
			out = append(out, d)
		}
	}
	return out, nil
}

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
func (s *Server) Repair(ctx context.Context, findings []Finding) ([]RepairResult, error) {
	ctx = toolContext(ctx, "taglock verify --repair")
	out := make([]RepairResult, 0, len(findings))
	for _, f := range findings {
		if !f.Immutable || (f.Kind != DriftMoved && f.Kind != DriftDeleted) {
			out = append(out, RepairResult{Finding: f, Outcome: RepairSkipped})
			continue
		}
		if err := s.repairOne(ctx, f); err != nil {
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

func (s *Server) repairOne(ctx context.Context, f Finding) error {
	b, err := s.ledger.Binding(ctx, f.Repo, f.Tag)
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
	id, err := storage.NewReservationID()
	if err != nil {
		return err
	}
	s.inflight.Store(id, struct{}{})
	defer s.done(id)
	ri := info(ctx)
	res, err := s.ledger.Reserve(ctx, storage.Reservation{ID: id, Repo: f.Repo, Tags: []string{f.Tag}, Digest: b.Digest, Closure: b.Closure,
		Deadline: s.now().Add(s.timeout), Owner: s.owner, User: ri.user, Expect: map[string]storage.Seen{f.Tag: b.Seen()}})
	switch {
	case errors.Is(err, storage.ErrBusy), errors.Is(err, storage.ErrChanged):
		return fmt.Errorf("%s:%s changed or is being written meanwhile (%v); verify again", f.Repo, f.Tag, err)
	case err != nil:
		return fmt.Errorf("%w: reserve %s:%s: %v", ErrLedger, f.Repo, f.Tag, err)
	}
	rctx, cancel := context.WithDeadline(ctx, res.Deadline)
	defer cancel()
	req, err := newRequest(rctx, http.MethodPut, &url.URL{Path: "/v2/" + f.Repo + "/manifests/" + f.Tag}, b.Manifest,
		http.Header{"Content-Type": {mediaType}})
	if err != nil {
		s.releaseOrLog(res.ID)
		return err
	}
	req.ContentLength = int64(len(b.Manifest))
	resp, err := s.up.RoundTrip(req)
	if err != nil {
		s.settleLater(res)
		return &unknownOutcome{op: "restore of " + f.Repo + ":" + f.Tag, err: err}
	}
	defer drain(resp)
	switch {
	case resp.StatusCode >= 500:
		s.settleLater(res)
		return &unknownOutcome{op: "restore of " + f.Repo + ":" + f.Tag, err: fmt.Errorf("the upstream answered %d", resp.StatusCode), answered: true}
	case resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK:
		s.releaseOrLog(res.ID)
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("upstream refused PUT %s:%s with %d: %s", f.Repo, f.Tag, resp.StatusCode, msg)
	}
	if d := resp.Header.Get("Docker-Content-Digest"); d != "" && d != b.Digest.String() {
		s.log.Warn().Str("computed", b.Digest.String()).Str("upstream", d).Msg("repair: upstream reported a different manifest digest")
	}
	ev := storage.Event{Time: s.now(), Kind: storage.EventRestored, Repo: f.Repo, Tag: f.Tag, Digest: b.Digest,
		Previous: f.Actual, User: ri.user, Rule: b.Rule, Reason: "drift-" + f.Kind,
		Message: fmt.Sprintf("repair: the tag was %s on the upstream around taglock; the recorded manifest was put back", f.Kind)}
	if err := s.ledger.Commit(context.WithoutCancel(ctx), res.ID, []storage.Binding{b}, []storage.Event{ev}); err != nil {
		s.stuck(res)
		return fmt.Errorf("%w: record repair of %s:%s: %v", ErrLedger, f.Repo, f.Tag, err)
	}
	s.audit.Warn().Str("event", "repaired").Str("repo", f.Repo).Str("tag", f.Tag).Str("recorded", b.Digest.String()).
		Str("actual", f.Actual.String()).Str("drift", f.Kind).Msg("restored an immutable tag that drifted on the upstream")
	return nil
}

// catalog lists every repository on the upstream, following pagination.
func (s *Server) catalog(ctx context.Context, lim *limiter) ([]string, error) {
	var out []string
	last := ""
	for range 100000 {
		if err := lim.wait(ctx); err != nil {
			return nil, err
		}
		page, next, err := s.catalogPage(ctx, last)
		if err != nil {
			return nil, err
		}
		out = append(out, page...)
		if next == "" || next == last {
			return out, nil
		}
		last = next
	}
	return nil, fmt.Errorf("%w: catalog did not end", ErrLookup)
}

func (s *Server) catalogPage(ctx context.Context, last string) (repos []string, next string, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	q := url.Values{"n": {"1000"}}
	if last != "" {
		q.Set("last", last)
	}
	req, err := newRequest(ctx, http.MethodGet, &url.URL{Path: "/v2/_catalog", RawQuery: q.Encode()}, nil, http.Header{})
	if err != nil {
		return nil, "", err
	}
	resp, err := s.up.RoundTrip(req)
	if err != nil {
		return nil, "", fmt.Errorf("%w: catalog: %v", ErrLookup, err)
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("%w: catalog answered %d", ErrLookup, resp.StatusCode)
	}
	var list struct {
		Repositories []string `json:"repositories"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&list); err != nil {
		return nil, "", fmt.Errorf("%w: catalog: %v", ErrLookup, err)
	}
	if resp.Header.Get("Link") != "" && len(list.Repositories) > 0 {
		next = list.Repositories[len(list.Repositories)-1]
	}
	return list.Repositories, next, nil
}

// allTags lists every tag of repo, following pagination.
func (s *Server) allTags(ctx context.Context, lim *limiter, repo string) ([]string, error) {
	var out []string
	last := ""
	for range 100000 {
		if err := lim.wait(ctx); err != nil {
			return nil, err
		}
		tags, next, err := s.listTags(ctx, http.Header{}, repo, last)
		if err != nil {
			var ua *upstreamAnswer
			if errors.As(err, &ua) {
				return nil, fmt.Errorf("%w: tag list %s answered %d", ErrLookup, repo, ua.status)
			}
			return nil, err
		}
		out = append(out, tags...)
		if next == "" || next == last {
			return out, nil
		}
		last = next
	}
	return nil, fmt.Errorf("%w: tag list of %s did not end", ErrLookup, repo)
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
