package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/taglock/taglock/internal/view"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/storage"
)

// ErrUnreachable means no taglock answered on the client's socket.
var ErrUnreachable = errors.New("no taglock answers")

// Client calls the API of a running taglock on its admin socket. Its ledger
// methods have the signatures and errors of storage.Ledger's, so callers can
// use either.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the taglock serving its admin socket at
// socket (admin.socket, by default taglock.sock in the data directory).
func NewClient(socket string) *Client {
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	return &Client{socket: socket, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", socket)
		},
		ResponseHeaderTimeout: 0, // imports and verifies answer when done
	}}}
}

// Socket is the path the client calls.
func (c *Client) Socket() string { return c.socket }

// call sends one request. The caller closes the body of a 2xx response;
// any other answer becomes an error.
func (c *Client) call(ctx context.Context, method, path string, q url.Values, body io.Reader, contentType string) (*http.Response, error) {
	// The host is never dialled: every connection goes to the socket.
	u := url.URL{Scheme: "http", Host: "taglock", Path: path, RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the dial's own error, without the made-up URL
		}
		return nil, fmt.Errorf("%w on the admin socket %s: %w", ErrUnreachable, c.socket, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	var ae apiError
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(raw, &ae) != nil || ae.Code == "" {
		return nil, fmt.Errorf("%w on the admin socket %s: %s %s answered %d (is it taglock?)", ErrUnreachable, c.socket, method, path, resp.StatusCode)
	}
	switch ae.Code {
	case "contradiction":
		return nil, &remoteError{msg: ae.Error, err: &storage.ContradictionError{Contradictions: ae.Contradictions}}
	case "not_found":
		return nil, fmt.Errorf("%s: %w", ae.Error, storage.ErrNotFound)
	case "invalid":
		return nil, fmt.Errorf("%s: %w", ae.Error, ErrInvalidRequest)
	case "unavailable":
		return nil, fmt.Errorf("%s: %w", ae.Error, ErrNoUpstream)
	}
	return nil, fmt.Errorf("taglock on %s: %s", c.socket, ae.Error)
}

// getJSON calls and decodes a JSON answer into v.
func (c *Client) getJSON(ctx context.Context, method, path string, q url.Values, in, v any) error {
	var body io.Reader
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, ct = bytes.NewReader(b), "application/json"
	}
	resp, err := c.call(ctx, method, path, q, body, ct)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("taglock on %s: %s: %w", c.socket, path, err)
	}
	return nil
}

// page follows one page of a list: it GETs path (with q), or the URL next
// an earlier page named, into v.
func (c *Client) page(ctx context.Context, path string, q url.Values, next string, v any) error {
	if next != "" {
		u, err := url.Parse(next)
		if err != nil || !strings.HasPrefix(u.Path, Prefix) {
			return fmt.Errorf("taglock on %s: a next page at %q", c.socket, next)
		}
		path, q = u.Path, u.Query()
	}
	return c.getJSON(ctx, http.MethodGet, path, q, nil, v)
}

// Repositories lists the repositories with bindings, reading every page.
func (c *Client) Repositories(ctx context.Context) ([]string, error) {
	var out []string
	q := url.Values{"n": {strconv.Itoa(view.MaxPage)}}
	for next := ""; ; {
		var r RepositoriesResponse
		if err := c.page(ctx, Prefix+"repositories", q, next, &r); err != nil {
			return nil, err
		}
		out = append(out, r.Repositories...)
		if next = r.Next; next == "" {
			return out, nil
		}
	}
}

// Bindings returns the bindings of repo, without manifest bytes, reading
// every page.
func (c *Client) Bindings(ctx context.Context, repo string) ([]storage.Binding, error) {
	var out []storage.Binding
	q := url.Values{"n": {strconv.Itoa(view.MaxPage)}}
	for next := ""; ; {
		var r TagsResponse
		err := c.page(ctx, Prefix+"repositories/"+repo+"/tags", q, next, &r)
		if errors.Is(err, storage.ErrNotFound) && next == "" {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r.Tags...)
		if next = r.Next; next == "" {
			return out, nil
		}
	}
}

// Binding returns the binding of repo:tag, without manifest bytes.
func (c *Client) Binding(ctx context.Context, repo, tag string) (storage.Binding, error) {
	var r BindingResponse
	err := c.getJSON(ctx, http.MethodGet, Prefix+"bindings/"+repo+":"+tag, url.Values{"n": {"1"}}, nil, &r)
	return r.Binding, err
}

// History returns the events of repo:tag, or of repo when tag is "",
// newest first; limit <= 0 means all. It reads page after page.
func (c *Client) History(ctx context.Context, repo, tag string, limit int) ([]storage.Event, error) {
	q := url.Values{"repo": {repo}}
	if tag != "" {
		q.Set("tag", tag)
	}
	return c.events(ctx, Prefix+"history", q, limit)
}

// Recent returns the newest refusals; kind must be storage.EventRefused.
func (c *Client) Recent(ctx context.Context, kind storage.EventKind, limit int) ([]storage.Event, error) {
	if kind != storage.EventRefused {
		return nil, fmt.Errorf("%w: the API lists recent refusals only", ErrInvalidRequest)
	}
	return c.events(ctx, Prefix+"refusals", url.Values{}, limit)
}

// events reads an event list page after page until it holds limit events
// (every one when limit <= 0).
func (c *Client) events(ctx context.Context, path string, q url.Values, limit int) ([]storage.Event, error) {
	var out []storage.Event
	q.Set("n", strconv.Itoa(view.PageSize(limit)))
	if limit <= 0 {
		q.Set("n", strconv.Itoa(view.MaxPage))
	}
	for next := ""; ; {
		var r EventsResponse
		if err := c.page(ctx, path, q, next, &r); err != nil {
			return nil, err
		}
		out = append(out, r.Events...)
		if limit > 0 && len(out) >= limit {
			return out[:limit], nil
		}
		if next = r.Next; next == "" {
			return out, nil
		}
	}
}

// RunImport runs an import in the server.
func (c *Client) RunImport(ctx context.Context, req ImportRequest) (proxy.ImportReport, error) {
	var r proxy.ImportReport
	err := c.getJSON(ctx, http.MethodPost, Prefix+"admin/import", nil, req, &r)
	return r, err
}

// RunVerify runs a verify, and a repair when asked, in the server.
func (c *Client) RunVerify(ctx context.Context, req VerifyRequest) (VerifyResult, error) {
	var r VerifyResult
	err := c.getJSON(ctx, http.MethodPost, Prefix+"admin/verify", nil, req, &r)
	return r, err
}

// stream copies a streamed answer to w.
func (c *Client) stream(ctx context.Context, path string, w io.Writer) (int64, error) {
	resp, err := c.call(ctx, http.MethodPost, path, nil, nil, "")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("taglock on %s: %s: %w", c.socket, path, err)
	}
	return n, nil
}

// Backup writes a consistent copy of the server's ledger file to w.
func (c *Client) Backup(ctx context.Context, w io.Writer) (int64, error) {
	return c.stream(ctx, Prefix+"admin/ledger/backup", w)
}

// Export writes the server's ledger as JSON lines to w.
func (c *Client) Export(ctx context.Context, w io.Writer) error {
	_, err := c.stream(ctx, Prefix+"admin/ledger/export", w)
	return err
}

// Import reads JSON lines from r into the server's ledger, as
// storage.Ledger.Import does; a refusal is a *storage.ContradictionError.
func (c *Client) Import(ctx context.Context, r io.Reader, o storage.ImportOptions) (storage.ImportStats, error) {
	var q url.Values
	if o.Force {
		q = url.Values{"force": {"true"}}
	}
	resp, err := c.call(ctx, http.MethodPost, Prefix+"admin/ledger/import", q, r, "application/x-ndjson")
	if err != nil {
		return storage.ImportStats{}, err
	}
	defer resp.Body.Close()
	var st storage.ImportStats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("taglock on %s: ledger import: %w", c.socket, err)
	}
	return st, nil
}

// Check runs the server's ledger check. Like storage.Ledger.Check it returns
// the problems and, when there are any, an error wrapping
// storage.ErrCorrupt.
func (c *Client) Check(ctx context.Context) ([]string, error) {
	var r CheckResponse
	if err := c.getJSON(ctx, http.MethodPost, Prefix+"admin/ledger/check", nil, nil, &r); err != nil {
		return nil, err
	}
	if len(r.Problems) > 0 {
		return r.Problems, fmt.Errorf("%d problems: %w", len(r.Problems), storage.ErrCorrupt)
	}
	return nil, nil
}
