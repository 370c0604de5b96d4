package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"unicode/utf8"

	digest "github.com/opencontainers/go-digest"
	"go.yaml.in/yaml/v3"
)

// This file finds image references in YAML (Kubernetes manifests, Helm
// output, compose files) and rewrites them in place. The YAML is parsed only
// to learn where each `image:` value sits; the rewrite replaces exactly
// those bytes, so comments, quoting, indentation and line endings stay as
// they were.

// imageSite is one `image:` value in a file.
type imageSite struct {
	Line, Column int // 1-based, as yaml.v3 reports them
	Value        string
	start, end   int   // byte range of the value's text (inside quotes)
	err          error // why the value cannot be rewritten in place, if it cannot
}

// imageRef is a parsed image reference: [HOST/]REPO[:TAG][@DIGEST].
type imageRef struct {
	Host   string
	Repo   string
	Tag    string
	Digest digest.Digest
}

var (
	tagRE       = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)
	repoRE      = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	errNotImage = errors.New("not an image reference")
)

// parseImageRef splits s. A first path segment is a host when it holds a dot
// or a colon or is localhost, as container runtimes decide it.
func parseImageRef(s string) (imageRef, error) {
	var r imageRef
	name := s
	if i := strings.IndexByte(s, '@'); i >= 0 {
		d, err := digest.Parse(s[i+1:])
		if err != nil {
			return r, fmt.Errorf("%w: digest: %v", errNotImage, err)
		}
		name, r.Digest = s[:i], d
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name, r.Tag = name[:i], name[i+1:]
		if !tagRE.MatchString(r.Tag) {
			return r, fmt.Errorf("%w: tag %q", errNotImage, r.Tag)
		}
	}
	if i := strings.IndexByte(name, '/'); i > 0 {
		if first := name[:i]; strings.ContainsAny(first, ".:") || first == "localhost" {
			r.Host, name = first, name[i+1:]
		}
	}
	if !repoRE.MatchString(name) {
		return r, fmt.Errorf("%w: repository %q", errNotImage, name)
	}
	r.Repo = name
	return r, nil
}

// String writes the reference back in its canonical spelling.
func (r imageRef) String() string {
	s := r.Repo
	if r.Host != "" {
		s = r.Host + "/" + s
	}
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest.String()
	}
	return s
}

// findImages returns every scalar value of an `image` key in every YAML
// document of src, in file order.
func findImages(src []byte) ([]imageSite, error) {
	lines := lineStarts(src)
	var out []imageSite
	dec := yaml.NewDecoder(bytes.NewReader(src))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		// Depth first, each pair before the next, so sites come in file
		// order: a mapping's own image: after a nested one's must not
		// come first, or the edits would be applied out of order.
		var walk func(n *yaml.Node)
		walk = func(n *yaml.Node) {
			if n.Kind != yaml.MappingNode {
				for _, c := range n.Content {
					walk(c)
				}
				return
			}
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				if k.Value == "image" && v.Kind == yaml.ScalarNode && v.Tag == "!!str" {
					out = append(out, locate(src, lines, v))
				}
				walk(k)
				walk(v)
			}
		}
		walk(&doc)
	}
	return out, nil
}

// lineStarts is the byte offset at which each line begins.
func lineStarts(src []byte) []int {
	starts := []int{0}
	for i, b := range src {
		if b == '\n' {
			starts = append(starts, i+1)
		}
	}
	return starts
}

// locate finds the bytes of a scalar value from yaml's line and column
// (counted in characters) and checks they spell the value, so a rewrite
// never touches anything else. A value it cannot place exactly carries an
// error instead.
func locate(src []byte, lines []int, n *yaml.Node) imageSite {
	site := imageSite{Line: n.Line, Column: n.Column, Value: n.Value}
	if n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		site.err = fmt.Errorf("image value %q is a block scalar; write it on one line", n.Value)
		return site
	}
	if n.Line < 1 || n.Line > len(lines) || n.Value == "" {
		site.err = fmt.Errorf("image value %q not found at line %d", n.Value, n.Line)
		return site
	}
	off := lines[n.Line-1]
	eol := len(src)
	if n.Line < len(lines) {
		eol = lines[n.Line]
	}
	for range n.Column - 1 {
		if off >= eol {
			break
		}
		_, size := utf8.DecodeRune(src[off:])
		off += size
	}
	if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 && off < eol {
		off++ // the opening quote
	}
	if end := off + len(n.Value); end <= eol && string(src[off:end]) == n.Value {
		site.start, site.end = off, end
		return site
	}
	// An anchor or tag before the value moves it along the line: accept
	// the value's one occurrence in the rest of the line.
	rest := src[min(off, eol):eol]
	if i := bytes.Index(rest, []byte(n.Value)); i >= 0 && bytes.Count(rest, []byte(n.Value)) == 1 {
		site.start = min(off, eol) + i
		site.end = site.start + len(n.Value)
		return site
	}
	site.err = fmt.Errorf("image value %q is spelled with escapes or line breaks; write it plainly on one line", n.Value)
	return site
}

// edit is one replacement of a site's value.
type edit struct {
	site imageSite
	with string
}

// applyEdits returns src with each edit's bytes replaced; edits must be in
// file order and not overlap (findImages guarantees both).
func applyEdits(src []byte, edits []edit) []byte {
	var b bytes.Buffer
	last := 0
	for _, e := range edits {
		b.Write(src[last:e.site.start])
		b.WriteString(e.with)
		last = e.site.end
	}
	b.Write(src[last:])
	return b.Bytes()
}
