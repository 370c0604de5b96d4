package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// reader is taglock's own view of the upstream: the lookups it makes to
// decide and to compare (manifests, tag lists, the catalog, whether content
// is there), each bounded by timeout and made with the client's credentials
// when they are passed through. It changes nothing on the upstream.
type reader struct {
	up      Upstream
	timeout time.Duration
	// maxManifest bounds a manifest read.
	maxManifest int64
}

// manifest GETs a manifest with the full Accept list and the client's
// credentials. found is false only on a definite 404; a 401/403 is relayed
// to the client as it is; anything else fails closed.
func (rd reader) manifest(ctx context.Context, h http.Header, repo, ref string) (body []byte, mediaType string, found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, rd.timeout)
	defer cancel()
	hdr := http.Header{"Accept": {ManifestAccept()}}
	if a := h.Get("Authorization"); a != "" {
		hdr.Set("Authorization", a)
	}
	req, err := newRequest(ctx, http.MethodGet, &url.URL{Path: "/v2/" + repo + "/manifests/" + ref}, nil, hdr)
	if err != nil {
		return nil, "", false, err
	}
	resp, err := rd.up.RoundTrip(req)
	if err != nil {
		return nil, "", false, fmt.Errorf("%w: GET %s:%s: %v", ErrLookup, repo, ref, err)
	}
	defer drain(resp)
	switch {
	case resp.StatusCode == http.StatusOK:
		body, err := io.ReadAll(io.LimitReader(resp.Body, rd.maxManifest+1))
		if err != nil {
			return nil, "", false, fmt.Errorf("%w: GET %s:%s: %v", ErrLookup, repo, ref, err)
		}
		if int64(len(body)) > rd.maxManifest {
			return nil, "", false, fmt.Errorf("%w: upstream manifest %s:%s exceeds %d bytes", ErrLookup, repo, ref, rd.maxManifest)
		}
		return body, resp.Header.Get("Content-Type"), true, nil
	case resp.StatusCode == http.StatusNotFound:
		return nil, "", false, nil
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		hdr := http.Header{}
		for _, k := range []string{"Www-Authenticate", "Content-Type", "Docker-Distribution-Api-Version"} {
			if v := resp.Header.Values(k); len(v) > 0 {
				hdr[k] = v
			}
		}
		return nil, "", false, &upstreamAnswer{status: resp.StatusCode, header: hdr, body: b}
	default:
		return nil, "", false, fmt.Errorf("%w: GET %s:%s answered %d", ErrLookup, repo, ref, resp.StatusCode)
	}
}

// tagPage reads one page of the upstream's tag list. next is the last tag
// to continue from, or "" at the end.
func (rd reader) tagPage(ctx context.Context, h http.Header, repo, last string) (tags []string, next string, err error) {
	ctx, cancel := context.WithTimeout(ctx, rd.timeout)
	defer cancel()
	q := url.Values{"n": {"1000"}}
	if last != "" {
		q.Set("last", last)
	}
	hdr := http.Header{}
	if a := h.Get("Authorization"); a != "" {
		hdr.Set("Authorization", a)
	}
	req, err := newRequest(ctx, http.MethodGet, &url.URL{Path: "/v2/" + repo + "/tags/list", RawQuery: q.Encode()}, nil, hdr)
	if err != nil {
		return nil, "", err
	}
	resp, err := rd.up.RoundTrip(req)
	if err != nil {
		return nil, "", fmt.Errorf("%w: tag list %s: %v", ErrLookup, repo, err)
	}
	defer drain(resp)
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, "", nil // no such repository: nothing to adopt
	case http.StatusUnauthorized, http.StatusForbidden:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return nil, "", &upstreamAnswer{status: resp.StatusCode, header: http.Header{"Www-Authenticate": resp.Header.Values("Www-Authenticate"), "Content-Type": resp.Header.Values("Content-Type")}, body: b}
	default:
		return nil, "", fmt.Errorf("%w: tag list %s answered %d", ErrLookup, repo, resp.StatusCode)
	}
	var list struct {
		Tags []string `json:"tags"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&list); err != nil {
		return nil, "", fmt.Errorf("%w: tag list %s: %v", ErrLookup, repo, err)
	}
	if resp.Header.Get("Link") != "" && len(list.Tags) > 0 {
		next = list.Tags[len(list.Tags)-1]
	}
	return list.Tags, next, nil
}

// catalog lists every repository on the upstream, following pagination.
func (rd reader) catalog(ctx context.Context, lim *limiter) ([]string, error) {
	var out []string
	last := ""
	for range 100000 {
		if err := lim.wait(ctx); err != nil {
			return nil, err
		}
		page, next, err := rd.catalogPage(ctx, last)
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

func (rd reader) catalogPage(ctx context.Context, last string) (repos []string, next string, err error) {
	ctx, cancel := context.WithTimeout(ctx, rd.timeout)
	defer cancel()
	q := url.Values{"n": {"1000"}}
	if last != "" {
		q.Set("last", last)
	}
	req, err := newRequest(ctx, http.MethodGet, &url.URL{Path: "/v2/_catalog", RawQuery: q.Encode()}, nil, http.Header{})
	if err != nil {
		return nil, "", err
	}
	resp, err := rd.up.RoundTrip(req)
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

// tags lists every tag of repo, following pagination.
func (rd reader) tags(ctx context.Context, lim *limiter, repo string) ([]string, error) {
	var out []string
	last := ""
	for range 100000 {
		if err := lim.wait(ctx); err != nil {
			return nil, err
		}
		tags, next, err := rd.tagPage(ctx, http.Header{}, repo, last)
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

// absent HEADs path on the upstream with the full manifest Accept list and
// the credentials in h (a client's, passed through to the upstream) or, when
// h has none, taglock's own: true on a 404, false on a 2xx, an error
// otherwise.
func (rd reader) absent(ctx context.Context, h http.Header, path string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, rd.timeout)
	defer cancel()
	hdr := http.Header{"Accept": manifestAccept}
	if a := h.Get("Authorization"); a != "" {
		hdr.Set("Authorization", a)
	}
	req, err := newRequest(ctx, http.MethodHead, &url.URL{Path: path}, nil, hdr)
	if err != nil {
		return false, err
	}
	resp, err := rd.up.RoundTrip(req)
	if err != nil {
		return false, fmt.Errorf("%w: HEAD %s: %v", ErrLookup, path, err)
	}
	drain(resp)
	switch {
	case resp.StatusCode/100 == 2:
		return false, nil
	case resp.StatusCode == http.StatusNotFound:
		return true, nil
	}
	return false, fmt.Errorf("%w: HEAD %s answered %d", ErrLookup, path, resp.StatusCode)
}
