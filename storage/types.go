package storage

import (
	"fmt"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
)

// Binding is what the ledger knows about one tag.
type Binding struct {
	Repo      string        `json:"repo"`
	Tag       string        `json:"tag"`
	Digest    digest.Digest `json:"digest"` // the bound digest
	MediaType string        `json:"mediaType,omitempty"`
	Size      int64         `json:"size"`
	Mode      policy.Mode   `json:"mode"`              // the policy mode in force when bound; the ledger stores it and never acts on it
	Rule      string        `json:"rule,omitempty"`    // the rule that decided the mode when bound
	PushedAt  time.Time     `json:"pushedAt"`          // when Digest was first bound to this tag
	PushedBy  string        `json:"pushedBy"`          // the user that first bound it, as recorded: verified, or marked "(unverified)"; "anonymous" when none
	Deleted   bool          `json:"deleted,omitempty"` // tombstone: the tag was deleted upstream; the binding stays
	DeletedAt time.Time     `json:"deletedAt,omitzero"`
	// Closure is every digest the manifest references: child manifests of
	// an index and all blobs (config, layers) of it and its children. It
	// never includes Digest itself; the ledger drops it, and duplicates,
	// when storing.
	Closure []digest.Digest `json:"closure,omitempty"`
	// Manifest is the raw manifest, kept for immutable bindings (may be nil).
	Manifest []byte `json:"manifest,omitempty"`
}

// EventKind names what happened in a history Event.
type EventKind string

// Event kinds.
const (
	EventAccepted  EventKind = "accepted"  // a tag was bound for the first time
	EventIdentical EventKind = "identical" // a tag was pushed again with its bound digest
	EventMoved     EventKind = "moved"     // a mutable tag was bound to another digest
	EventRefused   EventKind = "refused"   // a request was refused
	EventDeleted   EventKind = "deleted"   // a tag or manifest was deleted
	EventAdopted   EventKind = "adopted"   // a tag found upstream was recorded
	EventWarned    EventKind = "warned"    // a warn-mode tag moved
	EventRestored  EventKind = "restored"  // a drifted immutable tag was put back on its recorded digest
)

// Event is one append-only history entry. Seq is assigned by the ledger
// (global, strictly increasing).
type Event struct {
	Seq       uint64        `json:"seq"`
	Time      time.Time     `json:"time"`
	Kind      EventKind     `json:"kind"`
	Repo      string        `json:"repo"`
	Tag       string        `json:"tag,omitempty"`
	Digest    digest.Digest `json:"digest,omitempty"`   // the digest the request carried (attempted digest for refusals)
	Previous  digest.Digest `json:"previous,omitempty"` // the binding before the event, when there was one
	User      string        `json:"user,omitempty"`
	Rule      string        `json:"rule,omitempty"`
	Reason    string        `json:"reason,omitempty"` // machine-readable reason, e.g. "immutable-tag-moved"
	Message   string        `json:"message,omitempty"`
	RequestID string        `json:"requestId,omitempty"`
}

// ReservationKind says what a reservation holds its tags and digests for.
type ReservationKind string

// Reservation kinds.
const (
	// ReservePush holds tags for a manifest push; the zero Kind means it.
	ReservePush ReservationKind = "push"
	// ReserveDelete holds a tag, a manifest or a blob for a delete.
	ReserveDelete ReservationKind = "delete"
)

// Reservation holds tags and digests for one request in flight to the
// upstream: a manifest push, or a delete of a tag, a manifest or a blob. It
// is persisted, so it survives a crash, and it is settled by Commit (a push),
// CommitDelete (a delete) or Release.
//
// What a reservation holds, within its repository:
//
//   - a push holds Tags for Digest (other pushes of the same digest share
//     them) and depends on Digest and every digest in Closure, so no delete
//     of any of them can be reserved while it is pending;
//   - a delete by tag (one entry in Tags) holds that tag alone;
//   - a delete by digest (no Tags) holds Digest, a manifest or, with Blob, a
//     blob: no push that depends on it and no other delete of it can be
//     reserved while it is pending. A delete of a manifest also holds every
//     tag bound to it when it is reserved (Removes): a registry's delete by
//     digest untags them one by one, so a push moving one of them away
//     meanwhile could lose the tag.
type Reservation struct {
	// ID identifies the reservation: 32 lowercase hex digits. Reserve
	// assigns a random one when it is empty.
	ID string `json:"id"`
	// Kind is ReservePush ("" means the same) or ReserveDelete.
	Kind ReservationKind `json:"kind,omitempty"`
	Repo string          `json:"repo"`
	// Tags are the tags a push writes, or the one tag a delete removes.
	Tags []string `json:"tags,omitempty"`
	// Digest is the manifest pushed, the manifest or blob deleted, or, for
	// a delete by tag, the digest the tag was bound to ("" when the ledger
	// has no binding for it).
	Digest digest.Digest `json:"digest"`
	// Blob marks a delete of a blob rather than a manifest.
	Blob bool `json:"blob,omitempty"`
	// Removes is, for a delete of a manifest by digest, the tags bound to
	// it when Reserve stored it, which it holds. Reserve sets it.
	Removes []string `json:"removes,omitempty"`
	// Closure is every digest the pushed manifest references (child
	// manifests and blobs, transitively); deletes of them wait for the
	// push.
	Closure []digest.Digest `json:"closure,omitempty"`
	// Mode, for a delete by tag, is the mode the tag's tombstone records
	// (the mode that governed the tag when the delete was decided);
	// nil keeps the binding's own.
	Mode *policy.Mode `json:"mode,omitempty"`
	// CreatedAt is set by Reserve from the ledger's clock.
	CreatedAt time.Time `json:"createdAt"`
	// Deadline is when taglock's own request to the upstream for this
	// reservation ends at the latest; zero when unknown. Until some margin
	// after it, the request may still land, so its outcome stays in doubt.
	Deadline time.Time `json:"deadline,omitzero"`
	// Owner names the process that made the reservation and works on it.
	Owner string `json:"owner,omitempty"`
	// User is who asked for the push or delete, for the records made when
	// it is settled after a crash.
	User string `json:"user,omitempty"`
	// Expect maps each tag to what the caller saw of its binding when it
	// decided (absent = no binding). Reserve refuses the reservation when
	// any binding differs; it is not stored.
	Expect map[string]Seen `json:"-"`
}

// IsDelete reports whether r is a delete reservation.
func (r Reservation) IsDelete() bool { return r.Kind == ReserveDelete }

// Seen is what a caller saw of a tag's binding when it decided: the digest,
// the recorded mode and whether it was a tombstone. The zero Seen means no
// binding at all.
type Seen struct {
	Digest  digest.Digest `json:"digest,omitempty"`
	Mode    policy.Mode   `json:"mode"`
	Deleted bool          `json:"deleted,omitempty"`
}

// Seen returns what b shows a deciding caller.
func (b Binding) Seen() Seen { return Seen{Digest: b.Digest, Mode: b.Mode, Deleted: b.Deleted} }

// String describes s for messages: "no binding", the digest, or the digest
// marked as a tombstone.
func (s Seen) String() string {
	switch {
	case s == Seen{}:
		return "no binding"
	case s.Deleted:
		return string(s.Digest) + " (" + s.Mode.String() + ", deleted)"
	}
	return string(s.Digest) + " (" + s.Mode.String() + ")"
}

// Manifest records what a manifest references, so deletes and retention can
// see the graph without the upstream.
type Manifest struct {
	Repo         string          `json:"repo"`
	Digest       digest.Digest   `json:"digest"`
	MediaType    string          `json:"mediaType,omitempty"`
	Size         int64           `json:"size"`
	Children     []digest.Digest `json:"children,omitempty"` // index entries (child manifests)
	Blobs        []digest.Digest `json:"blobs,omitempty"`    // config, layers, artifact blobs
	Subject      digest.Digest   `json:"subject,omitempty"`  // OCI subject (referrers)
	ArtifactType string          `json:"artifactType,omitempty"`
}

// Pull is one observed pull of a manifest.
type Pull struct {
	Repo   string        `json:"repo"`
	Digest digest.Digest `json:"digest"`
	At     time.Time     `json:"at"`
}

// ImportStats counts the records Import wrote, by type, and lists the
// contradicting records it applied under ImportOptions.Force.
type ImportStats struct {
	Bindings     int `json:"bindings"`
	Events       int `json:"events"`
	Manifests    int `json:"manifests"`
	Pulls        int `json:"pulls"`
	Reservations int `json:"reservations"`
	// Replaced lists the records that changed what the ledger held;
	// empty without Force.
	Replaced []Contradiction `json:"replaced,omitempty"`
}

// Contradiction is one import record that would change what the ledger
// holds for a tag: a binding that differs in any field from the recorded
// one (another digest, a weaker mode, a tombstone, another first push...),
// or a reservation that would hold an immutable tag for another digest.
type Contradiction struct {
	// Record is the record's number in the import, from 1; in an export
	// every record is one line.
	Record int    `json:"record"`
	Repo   string `json:"repo"`
	Tag    string `json:"tag,omitempty"`
	// Manifest is set instead of Tag for a manifest record.
	Manifest digest.Digest `json:"manifest,omitempty"`
	// Changes lists what the record would change, field by field.
	Changes []Change `json:"changes"`
}

// Change is one field a contradicting record would change.
type Change struct {
	// Field is the binding's JSON field ("digest", "mode", "pushedAt",
	// ...), or "reservation" for a reservation holding an immutable tag.
	Field    string `json:"field"`
	Recorded string `json:"recorded"` // what the ledger holds
	Incoming string `json:"incoming"` // what the record carries
}

// String is "record 3: app:1.0: digest sha256:… -> sha256:…, mode
// immutable -> mutable".
func (c Contradiction) String() string {
	parts := make([]string, len(c.Changes))
	for i, ch := range c.Changes {
		parts[i] = fmt.Sprintf("%s %s -> %s", ch.Field, orDash(ch.Recorded), orDash(ch.Incoming))
	}
	return fmt.Sprintf("record %d: %s: %s", c.Record, c.Subject(), strings.Join(parts, ", "))
}

// Subject names what the contradicting record is about: repo:tag, or
// repo@digest for a manifest record.
func (c Contradiction) Subject() string {
	if c.Manifest != "" {
		return c.Repo + "@" + string(c.Manifest)
	}
	return c.Repo + ":" + c.Tag
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
