package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/storage"
)

// Pin statuses, one per image reference to taglock's registry.
const (
	pinOK        = "ok"         // pinned by digest, with an immutable tag or none
	pinRewritten = "pinned"     // rewritten to TAG@DIGEST (or would be, with --check)
	pinMutable   = "mutable"    // the tag is mutable: pinning it is a snapshot, not a promise
	pinConflict  = "conflict"   // the digest in the file is not the one the ledger binds
	pinUnpinned  = "not-pinned" // --check: no digest in the file
	pinFailed    = "failed"     // the tag could not be resolved, or the value not rewritten
)

// pinRef is what pin found and did for one image reference.
type pinRef struct {
	File   string        `json:"file"`
	Line   int           `json:"line"`
	Column int           `json:"column"`
	Ref    string        `json:"ref"`              // as the file spelled it
	Pinned string        `json:"pinned,omitempty"` // HOST/REPO:TAG@DIGEST
	Digest digest.Digest `json:"digest,omitempty"`
	Mode   string        `json:"mode,omitempty"`
	Source string        `json:"source,omitempty"` // "ledger" or "upstream"
	Status string        `json:"status"`
	Error  string        `json:"error,omitempty"`
}

// failsCheck reports whether the reference fails --check.
func (r pinRef) failsCheck() bool { return r.Status != pinOK }

// failsPin reports whether the reference stops pin from writing anything.
func (r pinRef) failsPin() bool { return r.Status == pinFailed || r.Status == pinConflict }

func newPinCmd(g *globals) *cobra.Command {
	var hosts []string
	var check bool
	cmd := &cobra.Command{
		Use:   "pin FILE...",
		Short: "Rewrite image references in Kubernetes and compose YAML to TAG@DIGEST from the ledger; --check gates CI",
		Long: `Pin finds every image: value in the YAML files (Kubernetes manifests,
Helm-rendered output, compose files; any number of documents per file) that
names taglock's registry host, and rewrites HOST/REPO:TAG to
HOST/REPO:TAG@sha256:..., keeping the tag for people to read. Only the
rewritten values change: comments, quoting, indentation and everything else
stay byte for byte.

Digests come from the ledger; a tag the ledger does not know is resolved by
a HEAD through taglock at the configured listen address. A reference that is
already pinned is checked against the ledger. Mutable tags are pinned to the
digest they hold now and reported. When any reference cannot be resolved, or
its digest contradicts the ledger, no file is written.

With --check nothing is written: pin exits 1 when any reference to the host
is not pinned, uses a mutable tag (latest included, or no tag at all), or
carries a digest other than the ledger's. Use it as the CI gate for "no
latest in production".
` + servesOrNot + `

Exit codes: 0 every reference pinned (or, with --check, passes), 1 a
reference failed (see its line) or a failure, 2 usage error.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
	}
	cmd.Flags().StringSliceVar(&hosts, "host", nil, "registry host whose references are pinned (repeatable; default: the listen address)")
	g.dataFlag(cmd, false)
	cmd.Flags().BoolVar(&check, "check", false, "write nothing; exit 1 on any reference not pinned or using a mutable tag")
	asJSON := outputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		js, err := asJSON()
		if err != nil {
			return err
		}
		files := make(map[string][]byte, len(args))
		for _, f := range args {
			b, err := os.ReadFile(f)
			if err != nil {
				return exitError{code: exitFailure, msg: err.Error()}
			}
			files[f] = b
		}
		s, err := g.open(cmd.Context(), readOnly)
		if err != nil {
			return err
		}
		defer s.close()
		if len(hosts) == 0 {
			hosts = []string{dialable(s.cfg.Listen)}
		}
		im, err := s.cfg.ImmutabilityPolicy()
		if err != nil {
			return err
		}
		p := &pinner{s: s, im: im, hosts: hosts, check: check, registry: "http://" + dialable(s.cfg.Listen),
			hc: &http.Client{Timeout: 30 * time.Second}, cache: map[string]pinRef{}}
		var refs []pinRef
		out := map[string][]byte{}
		for _, f := range args {
			r, edited, err := p.file(cmd.Context(), f, files[f])
			if err != nil {
				return s.explain(err)
			}
			refs = append(refs, r...)
			if edited != nil {
				out[f] = edited
			}
		}
		bad := 0
		for _, r := range refs {
			if check && r.failsCheck() || !check && r.failsPin() {
				bad++
			}
		}
		if !check && bad == 0 {
			for _, f := range args {
				if b, ok := out[f]; ok {
					if err := rewriteFile(f, b); err != nil {
						return err
					}
				}
			}
		}
		if js {
			if refs == nil {
				refs = []pinRef{}
			}
			if err := writeJSON(cmd.OutOrStdout(), refs); err != nil {
				return err
			}
		} else {
			printPins(cmd.OutOrStdout(), refs, check)
		}
		switch {
		case bad > 0 && check:
			return exitError{code: exitFailure, msg: fmt.Sprintf("%d of %d references to %s fail the check", bad, len(refs), strings.Join(hosts, ", "))}
		case bad > 0:
			return exitError{code: exitFailure, msg: fmt.Sprintf("%d of %d references could not be pinned; no file was written", bad, len(refs))}
		}
		return nil
	}
	return cmd
}

// pinner resolves references for one run of pin.
type pinner struct {
	s        *session
	im       policy.Immutability
	hosts    []string
	check    bool
	registry string // taglock's base URL for tags the ledger lacks
	hc       *http.Client
	cache    map[string]pinRef // REPO:TAG -> Digest, Mode, Source, Error
}

// file resolves every reference in one file and returns them, and the
// edited bytes when anything changed.
func (p *pinner) file(ctx context.Context, name string, src []byte) ([]pinRef, []byte, error) {
	sites, err := findImages(src)
	if err != nil {
		return nil, nil, exitError{code: exitFailure, msg: fmt.Sprintf("%s: %v", name, err)}
	}
	var refs []pinRef
	var edits []edit
	for _, site := range sites {
		ref, err := parseImageRef(site.Value)
		if err != nil || !p.ours(ref.Host) {
			continue
		}
		r := pinRef{File: name, Line: site.Line, Column: site.Column, Ref: site.Value, Digest: ref.Digest}
		if err := p.judge(ctx, &r, ref); err != nil {
			return nil, nil, err
		}
		if r.Status == pinRewritten && !p.check {
			if site.err != nil {
				r.Status, r.Error = pinFailed, site.err.Error()
			} else {
				edits = append(edits, edit{site: site, with: r.Pinned})
			}
		}
		refs = append(refs, r)
	}
	if len(edits) == 0 {
		return refs, nil, nil
	}
	return refs, applyEdits(src, edits), nil
}

// ours reports whether host is one of the registry hosts to pin.
func (p *pinner) ours(host string) bool {
	for _, h := range p.hosts {
		if host != "" && strings.EqualFold(h, host) {
			return true
		}
	}
	return false
}

// judge sets r's status: what pin does with the reference, or why --check
// refuses it. The error is for the ledger only.
func (p *pinner) judge(ctx context.Context, r *pinRef, ref imageRef) error {
	if ref.Tag == "" {
		if ref.Digest != "" {
			r.Status = pinOK
			return nil
		}
		r.Status, r.Error = pinMutable, "no tag (the runtime pulls latest, which is mutable); name a tag"
		if !p.check {
			r.Status = pinFailed
		}
		return nil
	}
	res, err := p.resolve(ctx, ref.Repo, ref.Tag)
	if err != nil {
		return err
	}
	r.Mode, r.Source = res.Mode, res.Source
	if res.Error != "" {
		if ref.Digest != "" && p.check && r.Mode == policy.Immutable.String() {
			// Pinned by digest, and the tag's mode says it never
			// moves; the ledger simply has not seen it.
			r.Status = pinOK
			return nil
		}
		r.Status, r.Error = pinFailed, res.Error
		return nil
	}
	pinned := ref
	pinned.Digest = res.Digest
	r.Pinned = pinned.String()
	switch {
	case ref.Digest != "" && ref.Digest != res.Digest:
		r.Status = pinConflict
		r.Error = fmt.Sprintf("the file pins %s, but %s:%s holds %s (%s)", ref.Digest, ref.Repo, ref.Tag, res.Digest, res.Source)
	case r.Mode != policy.Immutable.String():
		r.Status, r.Error = pinMutable, fmt.Sprintf("tag %q is %s: it can move, so the file does not say what runs", ref.Tag, r.Mode)
		if ref.Digest == "" && !p.check {
			r.Status = pinRewritten // pinned to what it holds now; reported
		}
	case ref.Digest == "":
		r.Status = pinRewritten
		if p.check {
			r.Status, r.Error = pinUnpinned, "no digest; run taglock pin"
		}
	default:
		r.Status = pinOK
	}
	r.Digest = res.Digest
	return nil
}

// resolve finds the digest and governing mode of repo:tag: from the ledger,
// or, when the ledger has no live binding, by a HEAD through taglock.
func (p *pinner) resolve(ctx context.Context, repo, tag string) (pinRef, error) {
	key := repo + ":" + tag
	if r, ok := p.cache[key]; ok {
		return r, nil
	}
	configured, _ := p.im.ModeFor(repo, tag)
	var r pinRef
	b, err := p.s.Binding(ctx, repo, tag)
	switch {
	case err == nil && !b.Deleted:
		r.Digest, r.Source = b.Digest, "ledger"
		r.Mode = policy.Effective(configured, b.Mode).String()
	case err == nil:
		r.Mode = policy.Effective(configured, b.Mode).String()
		r.Error = fmt.Sprintf("%s was deleted at %s (it was bound to %s)", key, b.DeletedAt.UTC().Format(time.RFC3339), b.Digest)
	case errors.Is(err, storage.ErrNotFound):
		r.Mode, r.Source = configured.String(), "upstream"
		r.Digest, err = p.head(ctx, repo, tag)
		if err != nil {
			r.Error = fmt.Sprintf("%s is not in the ledger, and %v", key, err)
		}
	default:
		return r, err
	}
	p.cache[key] = r
	return r, nil
}

// head asks taglock for the digest of repo:tag.
func (p *pinner) head(ctx context.Context, repo, tag string) (digest.Digest, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, p.registry+"/v2/"+repo+"/manifests/"+tag, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", proxy.ManifestAccept())
	resp, err := p.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("taglock at %s did not answer (%v)", p.registry, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return "", fmt.Errorf("the registry at %s does not have it", p.registry)
	case resp.StatusCode != http.StatusOK:
		return "", fmt.Errorf("the registry at %s answered %d", p.registry, resp.StatusCode)
	}
	d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		return "", fmt.Errorf("the registry at %s sent no valid Docker-Content-Digest", p.registry)
	}
	return d, nil
}

// rewriteFile replaces path's content atomically, keeping its permissions.
func rewriteFile(path string, b []byte) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	return writeAtomic(path, func(f *os.File) error {
		if _, err := f.Write(b); err != nil {
			return err
		}
		return f.Chmod(st.Mode().Perm())
	})
}

func printPins(w io.Writer, refs []pinRef, check bool) {
	changed, ok, failed := 0, 0, 0
	for _, r := range refs {
		loc := fmt.Sprintf("%s:%d", r.File, r.Line)
		switch {
		case r.Status == pinOK:
			ok++
		case r.Status == pinRewritten:
			changed++
			fmt.Fprintf(w, "%s: %s -> %s\n", loc, r.Ref, r.Pinned)
			if r.Error != "" {
				fmt.Fprintf(w, "%s: warning: %s\n", loc, r.Error)
			}
		default:
			if check && r.failsCheck() || !check && r.failsPin() {
				failed++
			}
			fmt.Fprintf(w, "%s: %s: %s: %s\n", loc, r.Ref, r.Status, r.Error)
		}
	}
	if check {
		fmt.Fprintf(w, "%d of %d references pinned to immutable tags\n", ok, len(refs))
		return
	}
	fmt.Fprintf(w, "%d references pinned, %d already pinned, %d failed\n", changed, ok, failed)
}
