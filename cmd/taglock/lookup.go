package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/storage"
)

// resolved is one line of resolve's JSON output.
type resolved struct {
	Ref    string        `json:"ref"`
	Pinned string        `json:"pinned,omitempty"` // HOST/REPO:TAG@DIGEST
	Digest digest.Digest `json:"digest,omitempty"`
	Mode   string        `json:"mode,omitempty"`
	Error  string        `json:"error,omitempty"`
}

func newResolveCmd(g *globals) *cobra.Command {
	var host string
	cmd := &cobra.Command{
		Use:   "resolve REPO:TAG...",
		Short: "Print HOST/REPO:TAG@sha256:... for each tag, from the ledger",
		Long: `Resolve looks each REPO:TAG up in the ledger and prints the reference to deploy
by: HOST/REPO:TAG@DIGEST. HOST is the configured listen address (an
unspecified host becomes 127.0.0.1) unless --host is given.
` + servesOrNot + `

Exit codes: 0 every tag resolved, 1 some tag is not in the ledger (or was
deleted) or the ledger could not be read, 2 usage error.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
	}
	cmd.Flags().StringVar(&host, "host", "", "registry host to print (default: the listen address)")
	g.dataFlag(cmd, false)
	asJSON := outputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		js, err := asJSON()
		if err != nil {
			return err
		}
		type ref struct{ repo, tag string }
		refs := make([]ref, len(args))
		for i, a := range args {
			repo, tag, ok := admin.SplitRef(a)
			if !ok {
				return exitError{code: exitUsage, msg: fmt.Sprintf("%q is not REPO:TAG", a)}
			}
			refs[i] = ref{repo, tag}
		}
		s, err := g.open(cmd.Context(), readOnly)
		if err != nil {
			return err
		}
		defer s.close()
		if host == "" {
			host = dialable(s.cfg.Listen)
		}
		var out []resolved
		unknown := 0
		for i, r := range refs {
			res := resolved{Ref: args[i]}
			b, err := s.Binding(cmd.Context(), r.repo, r.tag)
			switch {
			case errors.Is(err, storage.ErrNotFound):
				res.Error = "not in the ledger"
			case err != nil:
				return s.explain(err)
			case b.Deleted:
				res.Error = fmt.Sprintf("deleted at %s (was %s)", b.DeletedAt.UTC().Format(time.RFC3339), b.Digest)
			default:
				res.Digest, res.Mode = b.Digest, b.Mode.String()
				res.Pinned = fmt.Sprintf("%s/%s:%s@%s", host, r.repo, r.tag, b.Digest)
			}
			if res.Error != "" {
				unknown++
			}
			out = append(out, res)
		}
		if js {
			if err := writeJSON(cmd.OutOrStdout(), out); err != nil {
				return err
			}
		} else {
			for _, r := range out {
				if r.Error != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", r.Ref, r.Error)
					continue
				}
				fmt.Fprintln(cmd.OutOrStdout(), r.Pinned)
			}
		}
		if unknown > 0 {
			return exitError{code: exitFailure, msg: fmt.Sprintf("%d of %d references not resolved", unknown, len(out))}
		}
		return nil
	}
	return cmd
}

func newHistoryCmd(g *globals) *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "history REPO[:TAG]",
		Short: "Show the ledger's events for a tag or a repository, newest first",
		Long: `History prints the recorded events of REPO:TAG, or of every tag of REPO:
pushes (accepted), identical re-pushes, moves, refusals with who tried which
digest, deletes, adoptions and restores. Digests are shortened in text output;
-o json prints them in full.
` + servesOrNot + `

Exit codes: 0 events printed, 1 nothing recorded or failure, 2 usage error.`,
		Args: usageArgs(cobra.ExactArgs(1)),
	}
	cmd.Flags().IntVar(&limit, "limit", 50, "at most this many events; 0 means all")
	g.dataFlag(cmd, false)
	asJSON := outputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		js, err := asJSON()
		if err != nil {
			return err
		}
		if limit < 0 {
			return exitError{code: exitUsage, msg: "--limit must not be negative"}
		}
		repo, tag, ok := admin.SplitRef(args[0])
		if !ok {
			repo, tag = args[0], ""
		}
		s, err := g.open(cmd.Context(), readOnly)
		if err != nil {
			return err
		}
		defer s.close()
		events, err := s.History(cmd.Context(), repo, tag, limit)
		if err != nil {
			return s.explain(err)
		}
		if js {
			if events == nil {
				events = []storage.Event{}
			}
			if err := writeJSON(cmd.OutOrStdout(), events); err != nil {
				return err
			}
		} else if len(events) > 0 {
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tKIND\tTAG\tDIGEST\tPREVIOUS\tUSER\tRULE\tMESSAGE")
			for _, e := range events {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.UTC().Format(time.RFC3339), e.Kind, dash(e.Tag),
					short(e.Digest), short(e.Previous), dash(e.User), dash(e.Rule), oneLine(e.Message))
			}
			_ = tw.Flush()
		}
		if len(events) == 0 {
			return exitError{code: exitFailure, msg: "no events recorded for " + args[0]}
		}
		return nil
	}
	return cmd
}

// short abbreviates a digest to its algorithm and 12 hex characters.
func short(d digest.Digest) string {
	if d == "" {
		return "-"
	}
	if s := d.String(); len(s) > len("sha256:")+12 {
		return s[:len(d.Algorithm().String())+1+12]
	}
	return d.String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
