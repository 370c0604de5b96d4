package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy"
)

const servesOrNot = `
Works whether or not serve is running on the data directory: without serve
it opens the ledger (and, when needed, the upstream) itself; with serve it
asks the running server through its admin socket (admin.socket, by default
taglock.sock in the data directory), found through --config or --data.`

func newImportCmd(g *globals) *cobra.Command {
	var w walkFlags
	cmd := &cobra.Command{
		Use:   "import",
		Short: "Adopt the tags the upstream already holds into the ledger",
		Long: `Import walks the upstream's _catalog and tags/list (with pagination), reads
each tag's manifest with the full Accept list and records a binding, with the
digest computed from the bytes and the mode the configuration gives the tag,
for every tag the ledger does not have yet. Tags already recorded are
skipped, so import is idempotent and resumes where an interrupted run stopped.
Run it before putting taglock in front of an existing registry.
` + servesOrNot + `

Exit codes: 0 success, 1 failure, 2 usage error.`,
		Args: usageArgs(cobra.NoArgs),
	}
	w.add(cmd)
	g.dataFlag(cmd, false)
	asJSON := outputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		js, err := asJSON()
		if err != nil {
			return err
		}
		repos, r, err := w.parse()
		if err != nil {
			return err
		}
		s, err := g.open(cmd.Context(), withUpstream)
		if err != nil {
			return err
		}
		defer s.close()
		req := admin.ImportRequest{Repositories: repos, Rate: r}
		bar := newProgress(cmd.ErrOrStderr())
		req.Progress = bar.update
		rep, err := s.RunImport(cmd.Context(), req)
		bar.done()
		if err != nil {
			return usageOr(s.explain(err))
		}
		if js {
			return writeJSON(cmd.OutOrStdout(), rep)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "walked %d repositories, %d tags: adopted %d, already recorded %d, gone before read %d\n",
			rep.Repositories, rep.Tags, rep.Adopted, rep.Skipped, rep.Vanished)
		return nil
	}
	return cmd
}

// usageOr makes an invalid-request error (a bad glob) a usage error.
func usageOr(err error) error {
	if errors.Is(err, admin.ErrInvalidRequest) {
		return exitError{code: exitUsage, msg: err.Error()}
	}
	return err
}

// parseRate reads "N/s" or "N"; "" means no cap.
func parseRate(s string) (float64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseFloat(strings.TrimSuffix(s, "/s"), 64)
	if err != nil || n <= 0 {
		return 0, exitError{code: exitUsage, msg: fmt.Sprintf("--rate %q: want a positive number of requests per second, like 20/s", s)}
	}
	return n, nil
}

// progress draws a one-line progress display on a terminal; elsewhere it
// does nothing.
type progress struct {
	w    io.Writer
	on   bool
	last time.Time
}

func newProgress(w io.Writer) *progress {
	f, ok := w.(*os.File)
	return &progress{w: w, on: ok && term.IsTerminal(int(f.Fd()))}
}

func (p *progress) update(st proxy.ImportProgress) {
	if !p.on || time.Since(p.last) < 100*time.Millisecond {
		return
	}
	p.last = time.Now()
	fmt.Fprintf(p.w, "\r\033[Kimporting: %d/%d tags listed so far  %s:%s", st.Done, st.Total, st.Repository, st.Tag)
}

func (p *progress) done() {
	if p.on {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

func newVerifyCmd(g *globals) *cobra.Command {
	var w walkFlags
	var repair bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Find tags that changed on the upstream around taglock; --repair restores immutable ones",
		Long: `Verify compares every upstream tag with the ledger and reports drift, each
with the recorded and the actual digest:

  moved    the upstream tag holds another digest than the ledger records
  deleted  the ledger binds the tag; the upstream no longer has it
  new      the upstream has a tag the ledger never recorded (run taglock import)

With --repair it puts every moved or deleted immutable tag back by PUTting the
manifest bytes the ledger kept (the blobs must still exist upstream), records
the restore in the history and verifies again.
` + servesOrNot + `

Exit codes: 0 no immutable tag drifted (other findings may be listed),
1 failure, 2 usage error, 3 an immutable tag moved or was deleted (after
--repair: still is).`,
		Args: usageArgs(cobra.NoArgs),
	}
	w.add(cmd)
	g.dataFlag(cmd, false)
	cmd.Flags().BoolVar(&repair, "repair", false, "restore moved or deleted immutable tags, then verify again")
	asJSON := outputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		js, err := asJSON()
		if err != nil {
			return err
		}
		repos, r, err := w.parse()
		if err != nil {
			return err
		}
		s, err := g.open(cmd.Context(), withUpstream)
		if err != nil {
			return err
		}
		defer s.close()
		res, err := s.RunVerify(cmd.Context(), admin.VerifyRequest{Repositories: repos, Rate: r, Repair: repair})
		if err != nil {
			return usageOr(s.explain(err))
		}
		out := cmd.OutOrStdout()
		if js {
			if err := writeJSON(out, res); err != nil {
				return err
			}
		} else {
			printFindings(out, res.Report)
			if res.Repairs != nil {
				fmt.Fprintln(out)
				for _, r := range res.Repairs {
					if r.Outcome == proxy.RepairSkipped {
						continue
					}
					fmt.Fprintf(out, "repair %s:%s: %s %s\n", r.Finding.Repo, r.Finding.Tag, r.Outcome, r.Error)
				}
			}
			if res.After != nil {
				fmt.Fprintln(out, "\nafter repair:")
				printFindings(out, *res.After)
			}
		}
		if final := res.Final(); final.ImmutableDrift() {
			n := 0
			for _, f := range final.Findings {
				if f.Immutable {
					n++
				}
			}
			return exitError{code: exitDrift, msg: fmt.Sprintf("%d immutable tags drifted on the upstream", n)}
		}
		return nil
	}
	return cmd
}

func printFindings(w io.Writer, rep proxy.VerifyReport) {
	fmt.Fprintf(w, "compared %d tags in %d repositories: %d findings\n", rep.Tags, rep.Repositories, len(rep.Findings))
	if len(rep.Findings) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DRIFT\tTAG\tMODE\tRECORDED\tACTUAL\t")
	for _, f := range rep.Findings {
		kind := f.Kind
		if f.Immutable {
			kind = strings.ToUpper(kind)
		}
		fmt.Fprintf(tw, "%s\t%s:%s\t%s\t%s\t%s\t\n", kind, f.Repo, f.Tag, f.Mode, orDash(f.Recorded), orDash(f.Actual))
	}
	_ = tw.Flush()
	for _, f := range rep.Findings {
		for _, d := range f.Missing {
			fmt.Fprintf(w, "%s:%s: the upstream no longer has %s, which it references\n", f.Repo, f.Tag, d)
		}
	}
}

func orDash(d digest.Digest) string {
	if d == "" {
		return "-"
	}
	return d.String()
}

// walkFlags are the --repos and --rate flags of the commands that walk the
// upstream (import, verify).
type walkFlags struct {
	repos []string
	rate  string
}

func (w *walkFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringSliceVar(&w.repos, "repos", nil, "only repositories matching these globs (repeatable or comma-separated)")
	cmd.Flags().StringVar(&w.rate, "rate", "", "cap upstream requests, e.g. 20/s (default: no cap)")
}

// parse checks both flags before anything touches the ledger.
func (w *walkFlags) parse() ([]string, float64, error) {
	r, err := parseRate(w.rate)
	if err != nil {
		return nil, 0, err
	}
	if _, err := policy.CompileGlobs(w.repos); err != nil {
		return nil, 0, exitError{code: exitUsage, msg: "--repos: " + err.Error()}
	}
	return w.repos, r, nil
}
