package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/cluster"
	"github.com/taglock/taglock/internal/ledger"
	"github.com/taglock/taglock/internal/retention"
	"github.com/taglock/taglock/internal/server"
)

func newRetentionCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "retention",
		Short: "Plan and apply the retention policy (retention: in the config)",
		Long: `Retention deletes what the policies in retention: no longer keep. plan shows,
for every tag and untagged manifest of every governed repository, whether it
is kept or deleted and why; apply executes the plan: tags one by one
(DELETE manifests/<tag>), then manifests no tag points to any more, each
re-checked just before its delete. Deleted tags stay in the ledger as
tombstones, so they can be pushed again only with their original digest.
In embedded mode apply then reclaims blob storage (mark and sweep, with
writes held meanwhile) and reports the bytes freed.
` + servesOrNot,
	}
	g.dataFlag(cmd, true)
	cmd.AddCommand(newRetentionPlan(g), newRetentionApply(g))
	return cmd
}

// retentionService is what the retention commands need: the local runner
// or the running serve's admin API.
type retentionService interface {
	RetentionPlan(ctx context.Context) (retention.Report, error)
	RetentionApply(ctx context.Context, o retention.ApplyOptions) (retention.Result, error)
}

type localRetention struct{ r *retention.Runner }

func (l localRetention) RetentionPlan(ctx context.Context) (retention.Report, error) {
	return l.r.Plan(ctx)
}
func (l localRetention) RetentionApply(ctx context.Context, o retention.ApplyOptions) (retention.Result, error) {
	return l.r.Apply(ctx, o)
}

type remoteRetention struct{ c *admin.Client }

func (r remoteRetention) RetentionPlan(ctx context.Context) (retention.Report, error) {
	return r.c.RetentionPlan(ctx)
}
func (r remoteRetention) RetentionApply(ctx context.Context, _ retention.ApplyOptions) (retention.Result, error) {
	return r.c.RetentionApply(ctx)
}

// openRetention reaches retention: through serve's admin API when serve
// holds the ledger, otherwise on a ledger and upstream this process opens.
func (g *globals) openRetention(ctx context.Context) (*session, retentionService, error) {
	s, err := g.open(ctx, withUpstream)
	if err != nil {
		return nil, nil, err
	}
	switch svc := s.service.(type) {
	case *admin.Client:
		return s, remoteRetention{svc}, nil
	case admin.Local:
		if s.store == nil || s.tools == nil {
			s.close()
			return nil, nil, errors.New("retention: unexpected local session")
		}
		pol, err := s.cfg.RetentionSettings()
		if err != nil {
			s.close()
			return nil, nil, exitError{code: exitUsage, msg: err.Error()}
		}
		im, err := s.cfg.ImmutabilityPolicy()
		if err != nil {
			s.close()
			return nil, nil, exitError{code: exitUsage, msg: err.Error()}
		}
		log, err := newLogger(s.cfg.Log, os.Stderr)
		if err != nil {
			s.close()
			return nil, nil, err
		}
		audit := svc.Audit
		o := retention.Options{Policy: pol, Immutability: im, Ledger: s.store, Upstream: s.tools, Dir: server.RetentionDir(s.cfg.Data),
			Log: log, Audit: &audit}
		// On an etcd ledger, replicas of serve elsewhere share it: take
		// their retention lock, and collect no garbage while any runs.
		c, err := ledger.Join(ctx, s.cfg, s.store, "taglock-retention-command", true, log)
		if err != nil {
			s.close()
			return nil, nil, err
		}
		if c != nil {
			closeSession := s.close
			s.close = func() { c.Close(); closeSession() }
			o.Lock = func(ctx context.Context) (func(), error) {
				unlock, err := c.TryLock(ctx, "retention")
				if errors.Is(err, cluster.ErrLocked) {
					return nil, fmt.Errorf("%w (on a replica of serve)", retention.ErrRunning)
				}
				return unlock, err
			}
		}
		if s.cfg.Upstream.URL == "" && c != nil {
			dir := server.RegistryStorage(s.cfg.Data)
			o.GC = func(ctx context.Context, bound retention.BoundFunc) (retention.GCResult, error) {
				switch members, err := c.Members(ctx); {
				case err != nil:
					return retention.GCResult{}, err
				case len(members) > 0:
					return retention.GCResult{Deferred: true, Reason: fmt.Sprintf("%d replicas of serve share the registry's storage and may be writing to it", len(members))}, nil
				case s.cfg.Embedded.StorageDriver() != "filesystem":
					return retention.GCResult{Deferred: true, Reason: "taglock collects garbage on filesystem storage only"}, nil
				}
				return collect(ctx, dir, bound)
			}
		} else if s.cfg.Upstream.URL == "" {
			// No serve runs on this data directory (this process holds
			// the ledger), so nothing writes while the sweep runs.
			dir := server.RegistryStorage(s.cfg.Data)
			o.GC = func(ctx context.Context, bound retention.BoundFunc) (retention.GCResult, error) {
				return collect(ctx, dir, bound)
			}
		}
		return s, localRetention{retention.New(o)}, nil
	}
	s.close()
	return nil, nil, errors.New("retention: unexpected session")
}

func newRetentionPlan(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Show what retention would delete and why, changing nothing",
		Long: `Plan prints, per governed repository, every live tag and every manifest no kept
tag points to, with the decision (keep, delete or release) and the reason:
the rule that kept it, or that none did. It ends with totals and the space
to be freed (a lower bound when the upstream did not report some sizes).
` + servesOrNot + `

Exit codes: 0 plan printed, 1 failure or a plan over max_deletions, 2 usage error.`,
		Args: usageArgs(cobra.NoArgs),
	}
	asJSON := outputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		js, err := asJSON()
		if err != nil {
			return err
		}
		s, svc, err := g.openRetention(cmd.Context())
		if err != nil {
			return err
		}
		defer s.close()
		rep, err := svc.RetentionPlan(cmd.Context())
		if err != nil {
			return s.explain(err)
		}
		if js {
			if err := writeJSON(cmd.OutOrStdout(), rep); err != nil {
				return err
			}
		} else {
			printPlan(cmd.OutOrStdout(), rep)
		}
		if rep.OverLimit {
			return exitError{code: exitFailure, msg: fmt.Sprintf("the plan deletes %d, over max_deletions %d: apply would refuse it",
				rep.Totals.Deletions(), rep.MaxDeletions)}
		}
		return nil
	}
	return cmd
}

func printPlan(w io.Writer, rep retention.Report) {
	if len(rep.Plans) == 0 {
		fmt.Fprintln(w, "no repository is governed by a retention policy")
	}
	for _, p := range rep.Plans {
		fmt.Fprintf(w, "%s (%s)\n", p.Repository, p.Policy)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  \tDECISION\tTAG/MANIFEST\tDIGEST\tWHY")
		for _, t := range p.Tags {
			fmt.Fprintf(tw, "  \t%s\t%s\t%s\t%s\n", decision(t.Kept, t.Released), t.Tag, short(t.Digest), t.Reason)
		}
		for _, m := range p.Manifests {
			fmt.Fprintf(tw, "  \t%s\t%s\t%s\t%s\n", decision(m.Kept, false), "(manifest)", short(m.Digest), m.Reason)
		}
		_ = tw.Flush()
		fmt.Fprintln(w)
	}
	t := rep.Totals
	fmt.Fprintf(w, "tags: %d kept, %d deleted (%d immutable released); manifests without kept tags: %d kept, %d deleted\n",
		t.TagsKept, t.TagsDeleted, t.TagsReleased, t.ManifestsKept, t.ManifestsDeleted)
	freed := humanBytes(t.BytesFreed)
	if t.UnknownSizes > 0 {
		freed = fmt.Sprintf("at least %s (%d manifests of unknown size)", freed, t.UnknownSizes)
	}
	fmt.Fprintf(w, "space to free: %s\n", freed)
	if rep.OverLimit {
		fmt.Fprintf(w, "max_deletions: %d deletions planned, the limit is %d: apply will refuse this plan\n", t.Deletions(), rep.MaxDeletions)
	}
}

func decision(kept, released bool) string {
	switch {
	case kept:
		return "keep"
	case released:
		return "RELEASE"
	}
	return "DELETE"
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB (%d bytes)", float64(n)/float64(div), "KMGTPE"[exp], n)
}

func newRetentionApply(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Apply the retention plan: delete what no policy keeps",
		Long: `Apply finishes an interrupted run first, then plans and deletes: tags one by one,
then manifests no tag points to, each re-checked just before its delete. A
plan over retention.max_deletions is refused before anything is deleted.
One audit log line is written per deletion. A failed delete is reported
and tried again by the next run. In embedded mode apply then reclaims blob
storage and reports the bytes freed.
` + servesOrNot + `

Exit codes: 0 every deletion done, 1 failure, a refused plan or failed
deletions, 2 usage error.`,
		Args: usageArgs(cobra.NoArgs),
	}
	asJSON := outputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		js, err := asJSON()
		if err != nil {
			return err
		}
		s, svc, err := g.openRetention(cmd.Context())
		if err != nil {
			return err
		}
		defer s.close()
		bar := newApplyBar(cmd.ErrOrStderr())
		res, err := svc.RetentionApply(cmd.Context(), retention.ApplyOptions{Progress: bar.update})
		bar.done()
		if js {
			if werr := writeJSON(cmd.OutOrStdout(), res); werr != nil {
				return werr
			}
		} else {
			printApply(cmd.OutOrStdout(), res)
		}
		if err != nil {
			return exitError{code: exitFailure, msg: s.explain(err).Error()}
		}
		if res.Failed > 0 {
			return exitError{code: exitFailure, msg: fmt.Sprintf("%d deletions failed; the next run tries them again", res.Failed)}
		}
		return nil
	}
	return cmd
}

func printApply(w io.Writer, res retention.Result) {
	for _, d := range res.Deletions {
		if d.Outcome == retention.OutcomeFailed || d.Outcome == retention.OutcomeSkipped {
			ref := d.Repo + "@" + d.Digest.String()
			if d.Tag != "" {
				ref = d.Repo + ":" + d.Tag
			}
			fmt.Fprintf(w, "%s %s: %s\n", d.Outcome, ref, d.Error)
		}
	}
	fmt.Fprintf(w, "deleted %d, skipped %d, failed %d (resumed from an interrupted run: %d)\n", res.Deleted, res.Skipped, res.Failed, res.Resumed)
	switch {
	case res.GC != nil && res.GC.Deferred:
		fmt.Fprintf(w, "garbage collection deferred to the next run: %s\n", res.GC.Reason)
	case res.GC != nil:
		fmt.Fprintf(w, "garbage collection: %d blobs deleted, %s freed\n", res.GC.BlobsDeleted, humanBytes(res.GC.BytesFreed))
	}
}

// applyBar draws a progress bar on a terminal; elsewhere it does nothing.
type applyBar struct {
	w    io.Writer
	on   bool
	last time.Time
}

func newApplyBar(w io.Writer) *applyBar {
	f, ok := w.(*os.File)
	return &applyBar{w: w, on: ok && term.IsTerminal(int(f.Fd()))}
}

func (b *applyBar) update(p retention.Progress) {
	if !b.on || (time.Since(b.last) < 100*time.Millisecond && p.Done < p.Total) {
		return
	}
	b.last = time.Now()
	const width = 30
	n := width * p.Done / max(p.Total, 1)
	bar := make([]byte, width)
	for i := range bar {
		bar[i] = '.'
		if i < n {
			bar[i] = '#'
		}
	}
	fmt.Fprintf(b.w, "\r\033[Kretention [%s] %d/%d", bar, p.Done, p.Total)
}

func (b *applyBar) done() {
	if b.on {
		fmt.Fprint(b.w, "\r\033[K")
	}
}

// collect runs a garbage collection of dir that keeps what the ledger binds.
func collect(ctx context.Context, dir string, bound retention.BoundFunc) (retention.GCResult, error) {
	keep, err := bound(ctx)
	if err != nil {
		return retention.GCResult{}, err
	}
	return retention.CollectGarbage(ctx, dir, keep)
}
