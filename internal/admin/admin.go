// Package admin is taglock's JSON API under /taglock/v1/ and its client.
//
// The read-only half (GET) shows what the ledger knows: repositories, the
// bindings of a repository, a tag's binding and history, recent refusals
// and the last scheduled verify. serve answers it on its TCP listener,
// behind the registry's authentication, giving each caller a Viewer that
// leaves out what the caller may not pull; no peer address sees more.
//
// The admin half (POST under /taglock/v1/admin/) runs the operator tools
// inside a running serve, which holds the ledger's file lock: import, verify
// and repair, ledger backup, export, import and check, retention plan and
// apply. serve answers it only on its Unix socket (admin.socket), together
// with the read half showing everything; the socket's file permissions are
// the only authority, as with containerd's and Docker's sockets. A handler
// built without Options.Admin answers admin calls with 404, and the admin
// half refuses any request that did not arrive on a Unix socket, whatever
// it claims about itself. The taglock commands use it through Client when
// they find the ledger locked. Every admin call that changes the ledger
// writes an audit event naming what changed.
//
// The package decides nothing about tags: the ledger records and the proxy's
// tools (ImportTags, Verify, Repair) do the work. It must not touch the
// registry API under /v2/.
package admin

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/storage"
)

// Ledger is what the API reads and maintains.
type Ledger interface {
	RepositoriesAfter(ctx context.Context, after string, limit int) ([]string, error)
	BindingsAfter(ctx context.Context, repo, after string, limit int) ([]storage.Binding, error)
	Binding(ctx context.Context, repo, tag string) (storage.Binding, error)
	History(ctx context.Context, repo, tag string, limit int) ([]storage.Event, error)
	HistoryBefore(ctx context.Context, repo, tag string, before uint64, limit int) ([]storage.Event, error)
	RecentBefore(ctx context.Context, kind storage.EventKind, before uint64, limit int) ([]storage.Event, error)
	Backup(ctx context.Context, w io.Writer) (int64, error)
	Export(ctx context.Context, w io.Writer) error
	Import(ctx context.Context, r io.Reader, o storage.ImportOptions) (storage.ImportStats, error)
	Check(ctx context.Context) ([]string, error)
}

var _ Ledger = storage.Ledger(nil)

// Tools is what the API needs from the proxy to compare the ledger with the
// upstream.
type Tools interface {
	ImportTags(ctx context.Context, o proxy.ImportOptions) (proxy.ImportReport, error)
	Verify(ctx context.Context, o proxy.VerifyOptions) (proxy.VerifyReport, error)
	Repair(ctx context.Context, findings []proxy.Finding) ([]proxy.RepairResult, error)
}

var _ Tools = (*proxy.Drift)(nil)

type callerKey struct{}

// WithCaller returns ctx naming who asks, for the log and the audit events
// of admin calls: serve names the Unix socket's peer, the commands the
// local user when they hold the ledger themselves.
func WithCaller(ctx context.Context, who string) context.Context {
	return context.WithValue(ctx, callerKey{}, who)
}

// Caller is who WithCaller named in ctx, or "unknown".
func Caller(ctx context.Context) string {
	if who, ok := ctx.Value(callerKey{}).(string); ok && who != "" {
		return who
	}
	return "unknown"
}

// ErrNoUpstream means an import or verify was asked of a Local without
// Tools.
var ErrNoUpstream = errors.New("no upstream to compare the ledger with")

// ImportRequest asks for an import of the upstream's tags.
type ImportRequest struct {
	// Repositories are globs limiting the walk; empty means all.
	Repositories []string `json:"repositories,omitempty"`
	// Rate caps upstream requests per second; zero means no cap.
	Rate float64 `json:"rate,omitempty"`
	// Progress, when not nil, is called after each tag. It is not sent
	// over the API.
	Progress func(proxy.ImportProgress) `json:"-"`
}

// VerifyRequest asks for a drift check and, optionally, a repair.
type VerifyRequest struct {
	// Repositories are globs limiting the check; empty means all.
	Repositories []string `json:"repositories,omitempty"`
	// Rate caps upstream requests per second; zero means no cap.
	Rate float64 `json:"rate,omitempty"`
	// Repair puts moved or deleted immutable tags back, then verifies
	// again.
	Repair bool `json:"repair,omitempty"`
}

// VerifyResult is what a verify found and, with Repair, what it did.
type VerifyResult struct {
	// Report is the drift found first.
	Report proxy.VerifyReport `json:"report"`
	// Repairs has one entry per finding when Repair was asked.
	Repairs []proxy.RepairResult `json:"repairs,omitempty"`
	// After is the drift found after repairing; nil without Repair.
	After *proxy.VerifyReport `json:"after,omitempty"`
}

// Final is the report that decides the outcome: After when there is one,
// otherwise Report.
func (r VerifyResult) Final() proxy.VerifyReport {
	if r.After != nil {
		return *r.After
	}
	return r.Report
}

// Local runs the operations in this process, on a ledger it holds and, for
// import and verify, on the proxy's tools. It is what the API serves and what
// the commands use when serve is not running.
type Local struct {
	Ledger
	// Tools compare the ledger with the upstream; nil makes RunImport and
	// RunVerify fail with ErrNoUpstream.
	Tools Tools
	// Audit receives an event for each operation that changes the ledger,
	// naming what changed and the Caller. The zero value discards them.
	Audit zerolog.Logger
}

// RunImport adopts the upstream's tags that the ledger lacks.
func (l Local) RunImport(ctx context.Context, req ImportRequest) (proxy.ImportReport, error) {
	if l.Tools == nil {
		return proxy.ImportReport{}, ErrNoUpstream
	}
	globs, err := compile(req.Repositories)
	if err != nil {
		return proxy.ImportReport{}, err
	}
	rep, err := l.Tools.ImportTags(ctx, proxy.ImportOptions{Repositories: globs, Rate: req.Rate, Progress: req.Progress})
	l.auditImport(ctx, rep, err)
	return rep, err
}

// RunVerify reports drift and, when asked, repairs it and verifies again.
func (l Local) RunVerify(ctx context.Context, req VerifyRequest) (VerifyResult, error) {
	if l.Tools == nil {
		return VerifyResult{}, ErrNoUpstream
	}
	globs, err := compile(req.Repositories)
	if err != nil {
		return VerifyResult{}, err
	}
	opts := proxy.VerifyOptions{Repositories: globs, Rate: req.Rate}
	var res VerifyResult
	if res.Report, err = l.Tools.Verify(ctx, opts); err != nil {
		return res, err
	}
	if !req.Repair {
		return res, nil
	}
	res.Repairs, err = l.Tools.Repair(ctx, res.Report.Findings)
	l.auditRepair(ctx, res.Repairs)
	if err != nil {
		return res, err
	}
	after, err := l.Tools.Verify(ctx, opts)
	if err != nil {
		return res, err
	}
	res.After = &after
	return res, nil
}

// ErrInvalidRequest means a request's parameters do not parse.
var ErrInvalidRequest = errors.New("invalid request")

func compile(patterns []string) (policy.Globs, error) {
	g, err := policy.CompileGlobs(patterns)
	if err != nil {
		return nil, fmt.Errorf("%w: repositories: %w", ErrInvalidRequest, err)
	}
	return g, nil
}
