package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/internal/ledger"
	"github.com/taglock/taglock/internal/server"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/storage"
)

// Exit codes of the ledger commands (import, verify, resolve, history,
// ledger ...):
//
//	0  success; verify: no immutable tag drifted
//	1  failure, an unknown reference (resolve), nothing recorded (history)
//	   or problems found (ledger check)
//	2  usage error
//	3  verify: an immutable tag moved or was deleted around taglock
const (
	exitFailure = 1
	exitUsage   = 2
	exitDrift   = 3
)

// lockWait is how long a command waits for the ledger's file lock before it
// turns to the running serve's admin socket instead.
const lockWait = 200 * time.Millisecond

// service is what the ledger commands need. *admin.Client provides it
// through a running serve, admin.Local on a ledger this process opened.
type service interface {
	Binding(ctx context.Context, repo, tag string) (storage.Binding, error)
	History(ctx context.Context, repo, tag string, limit int) ([]storage.Event, error)
	Backup(ctx context.Context, w io.Writer) (int64, error)
	Export(ctx context.Context, w io.Writer) error
	Import(ctx context.Context, r io.Reader, o storage.ImportOptions) (storage.ImportStats, error)
	Check(ctx context.Context) ([]string, error)
	RunImport(ctx context.Context, req admin.ImportRequest) (proxy.ImportReport, error)
	RunVerify(ctx context.Context, req admin.VerifyRequest) (admin.VerifyResult, error)
}

var (
	_ service = (*admin.Client)(nil)
	_ service = admin.Local{}
)

// session is a service and how it was reached.
type session struct {
	service
	cfg    config.Config
	ledger string // the ledger, for messages: its file, or its etcd cluster and prefix
	socket string // the admin socket when serve holds the ledger; "" otherwise
	// store is the ledger this process opened itself; nil when serve
	// holds it.
	store storage.Ledger
	// tools is the proxy over store and the upstream, for withUpstream;
	// nil otherwise.
	tools *proxy.Drift
	close func()
}

// openMode says what a command needs from the ledger.
type openMode int

const (
	readOnly     openMode = iota // read the ledger; the file must exist
	readWrite                    // write the ledger
	withUpstream                 // write the ledger and reach the upstream
)

// open loads the config and reaches the ledger: directly when no other
// process holds it, otherwise through the admin socket of the serve that
// does. It never waits on the lock for more than lockWait. An etcd ledger
// is never held, but a serve on the data directory still owns its embedded
// registry and retention state: the commands go through its admin socket
// when one answers there, and reach etcd directly otherwise.
func (g *globals) open(ctx context.Context, mode openMode) (*session, error) {
	cfg, err := g.load()
	if err != nil {
		return nil, exitError{code: exitUsage, msg: err.Error()}
	}
	if g.data != "" {
		cfg.Data = g.data
	}
	path := ledger.BoltPath(cfg.Data)
	s := &session{cfg: cfg, ledger: ledger.Describe(cfg), close: func() {}}
	if ledger.Shared(cfg) && serveAnswers(cfg.AdminSocket()) {
		s.socket = cfg.AdminSocket()
		s.service = admin.NewClient(s.socket)
		return s, nil
	}
	if mode == readOnly && !ledger.Shared(cfg) {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil, exitError{code: exitFailure, msg: fmt.Sprintf("no ledger at %s: has taglock served from data directory %s?", path, cfg.Data)}
		}
	}
	l, err := ledger.Open(ctx, cfg, ledger.Options{LockTimeout: lockWait, ReadOnly: mode == readOnly})
	if errors.Is(err, storage.ErrLocked) {
		s.socket = cfg.AdminSocket()
		s.service = admin.NewClient(s.socket)
		return s, nil
	}
	if errors.Is(err, storage.ErrCorrupt) {
		return nil, exitError{code: exitFailure, msg: fmt.Sprintf(
			"%v; the ledger file cannot be read as it is: restore it from a copy made by `taglock ledger backup` (with serve stopped, put the copy at %s)", err, path)}
	}
	if err != nil {
		return nil, err
	}
	s.store = l
	local := admin.Local{Ledger: l}
	closeAudit := func() {}
	if mode != readOnly {
		// What this process changes is audited as serve would: to
		// log.audit and the log.
		log, err := newLogger(cfg.Log, os.Stderr)
		if err != nil {
			_ = l.Close()
			return nil, err
		}
		if local.Audit, closeAudit, err = server.OpenAudit(cfg.Log.Audit, log); err != nil {
			_ = l.Close()
			return nil, err
		}
	}
	s.close = func() { _ = l.Close(); closeAudit() }
	if mode == withUpstream {
		log, err := newLogger(config.Log{Level: "warn", Format: cfg.Log.Format}, os.Stderr)
		if err != nil {
			s.close()
			return nil, err
		}
		off, err := server.NewOffline(ctx, cfg, l, log)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("upstream: %w", err)
		}
		local.Tools = off.Drift()
		s.tools = off.Drift()
		s.close = func() { _ = off.Close(); _ = l.Close(); closeAudit() }
	}
	s.service = local
	return s, nil
}

// serveAnswers reports whether a process accepts connections on the Unix
// socket at path, within lockWait.
func serveAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, lockWait)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// explain turns an admin API failure into what the user must know: the
// ledger is held by another process and its admin socket did not answer.
func (s *session) explain(err error) error {
	if err == nil {
		return nil
	}
	var ee exitError
	if errors.As(err, &ee) {
		return err
	}
	if s.socket == "" || !errors.Is(err, admin.ErrUnreachable) {
		return err
	}
	hint := "if serve runs with another data directory or admin.socket, pass its config with --config or its data directory with --data"
	if errors.Is(err, fs.ErrPermission) {
		hint = "the admin socket admits only the user serve runs as and, with admin.group, that group's members: run the command as one of them"
	}
	return exitError{code: exitFailure, msg: fmt.Sprintf("the ledger %s is in use by another process, and %v; %s", s.ledger, err, hint)}
}

// serveTLS trusts exactly the certificate serve is configured with, for
// reaching serve's own HTTPS listener on loopback, which the certificate
// need not name (promote).
func serveTLS(cfg config.Config) (*tls.Config, error) {
	if cfg.TLS.Cert == "" {
		return nil, nil
	}
	pair, err := tls.LoadX509KeyPair(cfg.TLS.Cert, cfg.TLS.Key)
	if err != nil {
		return nil, fmt.Errorf("tls.cert: %w", err)
	}
	want := pair.Certificate[0]
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by the exact comparison below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], want) {
				return errors.New("the server on the listen address does not present tls.cert")
			}
			return nil
		},
	}, nil
}

// outputFlag adds -o/--output and returns a check that it is text or json.
func outputFlag(cmd *cobra.Command) func() (json bool, err error) {
	out := cmd.Flags().StringP("output", "o", "text", "output format: text or json")
	return func() (bool, error) {
		switch *out {
		case "text":
			return false, nil
		case "json":
			return true, nil
		}
		return false, exitError{code: exitUsage, msg: fmt.Sprintf("--output %q: want text or json", *out)}
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// usageArgs wraps a cobra argument check so that a violation exits 2.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return exitError{code: exitUsage, msg: fmt.Sprintf("%s: %v (see %s --help)", cmd.CommandPath(), err, cmd.CommandPath())}
		}
		return nil
	}
}

func newLedgerCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ledger",
		Short: "Back up, export, import and check the ledger",
		Long: `Maintain the ledger. Each subcommand works whether or not serve is running on
the data directory: without serve it opens the ledger itself; with serve it
asks the running server through its admin socket (admin.socket, by default
taglock.sock in the data directory), found through --config or --data. With
ledger.backend etcd and no serve answering on the socket, the subcommands
reach the etcd cluster the config names directly: export from one config and
import with another to move a ledger between bolt and etcd.

Exit codes: 0 success, 1 failure or problems found, 2 usage error.`,
	}
	g.dataFlag(cmd, true)
	cmd.AddCommand(newLedgerBackup(g), newLedgerExport(g), newLedgerImport(g), newLedgerCheck(g))
	return cmd
}

func newLedgerBackup(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backup FILE",
		Short: "Write a hot, consistent copy of the ledger (bolt: the file; etcd: its export), checked before it replaces FILE",
		Args:  usageArgs(cobra.ExactArgs(1)),
	}
	asJSON := outputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		js, err := asJSON()
		if err != nil {
			return err
		}
		s, err := g.open(cmd.Context(), readOnly)
		if err != nil {
			return err
		}
		defer s.close()
		dst, err := filepath.Abs(args[0])
		if err != nil {
			return err
		}
		if src, _ := filepath.Abs(s.ledger); src == dst {
			return exitError{code: exitUsage, msg: "backup FILE is the ledger itself"}
		}
		var n int64
		err = writeAtomic(dst, func(f *os.File) error {
			var err error
			if n, err = s.Backup(cmd.Context(), f); err != nil {
				return s.explain(err)
			}
			return ledger.CheckBackup(cmd.Context(), s.cfg, f.Name())
		})
		if err != nil {
			return err
		}
		if js {
			return writeJSON(cmd.OutOrStdout(), map[string]any{"file": dst, "bytes": n})
		}
		fmt.Fprintf(cmd.OutOrStdout(), "backed up %s to %s (%d bytes, checked)\n", s.ledger, dst, n)
		return nil
	}
	return cmd
}

// writeAtomic writes path through a temporary file in the same directory,
// synced and renamed into place only when fill succeeds.
func writeAtomic(path string, fill func(*os.File) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if err := fill(f); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func newLedgerExport(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "export [FILE|-]",
		Short: "Write the ledger as JSON lines (the format for migrating between backends) to FILE or stdout",
		Args:  usageArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.open(cmd.Context(), readOnly)
			if err != nil {
				return err
			}
			defer s.close()
			if len(args) == 0 || args[0] == "-" {
				return s.explain(s.Export(cmd.Context(), cmd.OutOrStdout()))
			}
			return writeAtomic(args[0], func(f *os.File) error { return s.explain(s.Export(cmd.Context(), f)) })
		},
	}
}

func newLedgerImport(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "import FILE|-",
		Short: "Read JSON lines written by ledger export into the ledger; importing the same file again is safe",
		Long: `Import reads the JSON lines ledger export wrote (from FILE, or stdin with -)
into the ledger. It never changes a recorded binding silently: a binding line
that differs in any way from what the ledger holds for its tag (another
digest, a weaker mode, a revived tombstone, another first push), a second line
for one tag that differs from the first, and a pending reservation that would
hold an immutable tag for another digest each contradict the ledger. Each is
printed with what it would change, and the import is refused: nothing is
written. With --force the whole file is applied, and each binding it replaced
is printed and written to the audit log. Lines identical to the ledger and
tags it does not hold need no --force, so importing the same file again is
safe.

Exit codes: 0 imported, 1 failure or refused (lines contradict the ledger),
2 usage error.`,
		Args: usageArgs(cobra.ExactArgs(1)),
	}
	cmd.Flags().BoolVar(&force, "force", false, "apply lines that contradict the ledger, replacing the bindings it holds")
	asJSON := outputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		js, err := asJSON()
		if err != nil {
			return err
		}
		in := cmd.InOrStdin()
		if args[0] != "-" {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			in = f
		}
		s, err := g.open(cmd.Context(), readWrite)
		if err != nil {
			return err
		}
		defer s.close()
		out := cmd.OutOrStdout()
		st, err := s.Import(cmd.Context(), in, storage.ImportOptions{Force: force})
		var ce *storage.ContradictionError
		if errors.As(err, &ce) {
			if js {
				if err := writeJSON(out, map[string]any{"contradictions": ce.Contradictions}); err != nil {
					return err
				}
			} else {
				for _, c := range ce.Contradictions {
					printContradiction(out, "contradicts the ledger", c)
				}
			}
			n := fmt.Sprintf("%d lines contradict", len(ce.Contradictions))
			if len(ce.Contradictions) == 1 {
				n = "1 line contradicts"
			}
			return exitError{code: exitFailure, msg: "ledger import refused: " + n + " what the ledger holds, " +
				"and no recorded binding was changed; check them, then import with --force to apply them"}
		}
		if err != nil {
			return s.explain(err)
		}
		if js {
			return writeJSON(out, st)
		}
		for _, c := range st.Replaced {
			printContradiction(out, "replaced what the ledger held", c)
		}
		fmt.Fprintf(out, "imported %d bindings, %d events, %d manifests, %d pulls, %d reservations; %d replaced what the ledger held\n",
			st.Bindings, st.Events, st.Manifests, st.Pulls, st.Reservations, len(st.Replaced))
		return nil
	}
	return cmd
}

// printContradiction prints one import line that contradicts the ledger,
// with one change per line.
func printContradiction(w io.Writer, what string, c storage.Contradiction) {
	fmt.Fprintf(w, "line %d, %s, %s:\n", c.Record, c.Subject(), what)
	for _, ch := range c.Changes {
		fmt.Fprintf(w, "    %-11s %s -> %s\n", ch.Field, dash(ch.Recorded), dash(ch.Incoming))
	}
}

func newLedgerCheck(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check the ledger's integrity; print each problem and exit 1 when there are any",
		Args:  usageArgs(cobra.NoArgs),
	}
	asJSON := outputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		js, err := asJSON()
		if err != nil {
			return err
		}
		s, err := g.open(cmd.Context(), readOnly)
		if err != nil {
			return err
		}
		defer s.close()
		problems, err := s.Check(cmd.Context())
		if err != nil && !(errors.Is(err, storage.ErrCorrupt) && len(problems) > 0) {
			return s.explain(err)
		}
		if js {
			if problems == nil {
				problems = []string{}
			}
			if err := writeJSON(cmd.OutOrStdout(), map[string]any{"ledger": s.ledger, "problems": problems}); err != nil {
				return err
			}
		} else {
			for _, p := range problems {
				fmt.Fprintln(cmd.OutOrStdout(), p)
			}
			if len(problems) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "ledger %s: ok\n", s.ledger)
			}
		}
		if len(problems) > 0 {
			return exitError{code: exitFailure, msg: fmt.Sprintf("ledger %s: %d problems", s.ledger, len(problems))}
		}
		return nil
	}
	return cmd
}
