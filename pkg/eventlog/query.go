package eventlog

import (
	"context"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/postflow/postflow/pkg/queue"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// Query errors.
var (
	// ErrCursorExpired is returned by Watch when events after the cursor
	// are no longer stored (aged out of retention, or the stream was purged
	// or recreated), so resuming there would silently lose some.
	ErrCursorExpired = errors.New("eventlog: cursor older than retention")
	// ErrBadCursor is returned by DecodeCursor for a string EncodeCursor
	// did not produce.
	ErrBadCursor = errors.New("eventlog: malformed cursor")
)

const (
	// scanBudget bounds the stored events one List call examines, so that a
	// selective filter over a large stream returns a short (even empty)
	// page with more=true instead of one unbounded call.
	scanBudget = 20_000

	// timeSlack widens the stored-time window List and Watch read for
	// Since and Until. Event.Time is stamped by the writer just before it
	// publishes, while the stream's time index holds the server's store
	// time; the two differ by publish latency and clock skew between hosts.
	// Reading from Since-timeSlack and until a store time of Until+timeSlack
	// keeps such events in range; Match still applies the exact bounds.
	timeSlack = time.Minute

	// consumerIdle is the InactiveThreshold of the ordered consumers List
	// and Watch create: the server deletes one left behind by a process
	// that died before deleting it. A Watch whose callback blocks longer
	// loses its consumer too, and the ordered consumer recreates it at the
	// next sequence, so this bounds leftovers without costing correctness.
	consumerIdle = time.Minute

	// listIdle is how long List waits for the next event the consumer says
	// is pending before it checks why none came (events can age out
	// between the count and the delivery).
	listIdle = 5 * time.Second

	// releaseTimeout bounds deleting a consumer once a read is over; it
	// runs even after the caller's context ended.
	releaseTimeout = 5 * time.Second

	// Pull batch sizes. A List page that matches everything stops after
	// limit events, so its batch follows limit; a selective scan gains from
	// fewer, larger pulls up to maxListBatch.
	minListBatch = 256
	maxListBatch = 1000
	watchBatch   = 256
)

// errListIdle cancels a List read that has waited listIdle for an event.
var errListIdle = errors.New("eventlog: no event delivered within the idle timeout")

// Filter selects events, as EventFilter in status.proto: every set field
// must match, and the zero Filter matches every event.
type Filter struct {
	// MessageID selects one message's events; List and Watch then read
	// only that message's subjects.
	MessageID string
	// Recipient is compared case-insensitively with Event.Recipient.
	Recipient  string
	CampaignID string
	// Tag matches events whose Tags contain it.
	Tag string
	// States matches events whose state is any of these.
	States []postflowv1.RecipientState
	// Types matches events whose type is any of these.
	Types []postflowv1.EventType
	// Since and Until bound Event.Time: Since <= Time < Until. A zero
	// bound is unbounded.
	Since, Until time.Time
}

// Match reports whether ev satisfies every set field of f.
func (f Filter) Match(ev *postflowv1.Event) bool {
	if f.MessageID != "" && ev.GetMessageId() != f.MessageID {
		return false
	}
	if f.Recipient != "" && !strings.EqualFold(ev.GetRecipient(), f.Recipient) {
		return false
	}
	if f.CampaignID != "" && ev.GetCampaignId() != f.CampaignID {
		return false
	}
	if f.Tag != "" && !slices.Contains(ev.GetTags(), f.Tag) {
		return false
	}
	if len(f.States) > 0 && !slices.Contains(f.States, ev.GetState()) {
		return false
	}
	if len(f.Types) > 0 && !slices.Contains(f.Types, ev.GetType()) {
		return false
	}
	if !f.Since.IsZero() || !f.Until.IsZero() {
		t := ev.GetTime().AsTime()
		if !f.Since.IsZero() && t.Before(f.Since) {
			return false
		}
		if !f.Until.IsZero() && !t.Before(f.Until) {
			return false
		}
	}
	return true
}

// Item is one event and its position: its sequence in the EVENTS stream,
// which EncodeCursor turns into a page token or watch cursor.
type Item struct {
	Seq   uint64
	Event *postflowv1.Event
}

// readLimits are the bounds List and Watch read with: defaultLimits, or
// smaller ones in tests. They are parameters, not package variables, so
// tests that shrink them can run in parallel with the others.
type readLimits struct {
	budget int           // stored events one List call examines at most; Watch has none
	slack  time.Duration // see timeSlack
}

var defaultLimits = readLimits{budget: scanBudget, slack: timeSlack}

// List returns tenant's events matching f that were recorded after sequence
// after, oldest first, at most limit of them (limit must be positive).
//
// With after 0 the listing starts at the beginning of the stream, or, when
// f.Since is set, at the stream's time index for Since (less timeSlack).
// With f.MessageID set only that message's subjects are read; otherwise
// every event of the tenant is read and filtered here, at most scanBudget
// of them per call, so a page can hold fewer than limit events, even none,
// with more still true.
//
// next is the sequence of the last event examined (after, when none was):
// pass it as after for the next page. more is false once the call reached
// the last event stored at the time, or, with f.Until set, an event stored
// after Until (plus timeSlack); then every matching event recorded so far
// has been returned.
func (r *Reader) List(ctx context.Context, tenant string, f Filter, after uint64, limit int) (items []Item, next uint64, more bool, err error) {
	return r.list(ctx, tenant, f, after, limit, defaultLimits)
}

func (r *Reader) list(ctx context.Context, tenant string, f Filter, after uint64, limit int, lim readLimits) (items []Item, next uint64, more bool, err error) {
	if limit <= 0 {
		return nil, after, false, fmt.Errorf("eventlog: list limit %d, want at least 1", limit)
	}
	subject, err := filterSubject(tenant, f.MessageID)
	if err != nil {
		return nil, after, false, err
	}
	if !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return nil, after, false, nil // an empty time range
	}
	st, err := r.stream(ctx)
	if err != nil {
		return nil, after, false, err
	}
	cfg := consumerConfig(subject)
	switch {
	case after > 0:
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = after + 1
	case !f.Since.IsZero():
		start := f.Since.Add(-lim.slack)
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &start
	}
	cons, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return nil, after, false, fmt.Errorf("eventlog: list %s: %w", subject, err)
	}
	var it jetstream.MessagesContext
	defer func() { r.release(ctx, cons, it) }()

	// The count of events the consumer has left tells both whether there is
	// anything to read and, below, when the last stored event was read: List
	// never waits for events yet to be recorded.
	pending := cons.CachedInfo().NumPending
	if pending == 0 {
		return nil, after, false, nil
	}
	batch := min(pending, uint64(lim.budget), uint64(min(max(limit, minListBatch), maxListBatch)))
	it, err = cons.Messages(jetstream.PullMaxMessages(int(batch)), jetstream.StopAfter(lim.budget))
	if err != nil {
		return nil, after, false, fmt.Errorf("eventlog: list %s: %w", subject, err)
	}

	var stopAt time.Time // store time from which no event can be before Until
	if !f.Until.IsZero() {
		stopAt = f.Until.Add(lim.slack)
	}
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(listIdle, func() { cancel(errListIdle) })
	defer idle.Stop()

	next = after
	for examined := 0; examined < lim.budget; examined++ {
		msg, err := it.Next(jetstream.NextContext(rctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil, after, false, ctx.Err()
			}
			if errors.Is(context.Cause(rctx), errListIdle) {
				return r.idleEnd(ctx, cons, items, next, after)
			}
			return nil, after, false, fmt.Errorf("eventlog: list %s: %w", subject, err)
		}
		idle.Reset(listIdle)
		md, err := msg.Metadata()
		if err != nil {
			return nil, after, false, fmt.Errorf("eventlog: list %s: %w", subject, err)
		}
		next = md.Sequence.Stream
		if !stopAt.IsZero() && !md.Timestamp.Before(stopAt) {
			return items, next, false, nil
		}
		ev, err := decode(msg.Subject(), md.Sequence.Stream, msg.Data())
		if err != nil {
			return nil, after, false, err
		}
		if f.Match(ev) {
			items = append(items, Item{Seq: md.Sequence.Stream, Event: ev})
		}
		if md.NumPending == 0 {
			return items, next, false, nil
		}
		if len(items) == limit {
			return items, next, true, nil
		}
	}
	return items, next, true, nil
}

// idleEnd ends a List read after no event arrived for listIdle although
// the consumer had counted some pending: if none are left (they aged out
// meanwhile) the listing is complete, otherwise the events read so far are
// a short page.
func (r *Reader) idleEnd(ctx context.Context, cons jetstream.Consumer, items []Item, next, after uint64) ([]Item, uint64, bool, error) {
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, after, false, fmt.Errorf("eventlog: list: %w", err)
	}
	if info.NumPending == 0 {
		return items, next, false, nil
	}
	if next == after {
		return nil, after, false, fmt.Errorf("eventlog: list: %w", errListIdle)
	}
	return items, next, true, nil
}

// Watch calls fn, in stream order, once for every event of tenant matching
// f and recorded after sequence after, and keeps following new events until
// ctx ends (it returns ctx.Err()) or fn returns an error (it returns that
// error). fn runs on the caller's goroutine; while it runs, events wait.
//
// It starts after after when after > 0, returning ErrCursorExpired before
// calling fn if events following after are no longer stored or after is
// beyond the last stored event; else at f.Since (less timeSlack) when set;
// else with the events recorded from the call on. f.Until is ignored, as
// WatchEvents specifies.
//
// The events come from an ordered consumer, which recreates its server-side
// consumer after a gap, a missed heartbeat or a reconnect, resuming after
// the last event handed out, so no event is skipped or repeated.
func (r *Reader) Watch(ctx context.Context, tenant string, f Filter, after uint64, fn func(Item) error) error {
	return r.watch(ctx, tenant, f, after, fn, defaultLimits)
}

func (r *Reader) watch(ctx context.Context, tenant string, f Filter, after uint64, fn func(Item) error, lim readLimits) error {
	subject, err := filterSubject(tenant, f.MessageID)
	if err != nil {
		return err
	}
	f.Until = time.Time{}
	st, err := r.stream(ctx)
	if err != nil {
		return err
	}
	cfg := consumerConfig(subject)
	cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
	switch {
	case after == 0 && !f.Since.IsZero():
		start := f.Since.Add(-lim.slack)
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &start
	default:
		info, err := st.Info(ctx)
		if err != nil {
			return fmt.Errorf("eventlog: watch %s: %w", subject, err)
		}
		if after == 0 {
			// "From now on" as a fixed sequence rather than DeliverNew: an
			// ordered consumer recreated before its first delivery re-applies
			// its start policy, and DeliverNew would then skip the events
			// recorded in between.
			cfg.OptStartSeq = info.State.LastSeq + 1
			break
		}
		if after+1 < info.State.FirstSeq || after > info.State.LastSeq {
			return ErrCursorExpired
		}
		cfg.OptStartSeq = after + 1
	}
	cons, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("eventlog: watch %s: %w", subject, err)
	}
	var it jetstream.MessagesContext
	defer func() { r.release(ctx, cons, it) }()
	it, err = cons.Messages(jetstream.PullMaxMessages(watchBatch))
	if err != nil {
		return fmt.Errorf("eventlog: watch %s: %w", subject, err)
	}
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("eventlog: watch %s: %w", subject, err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("eventlog: watch %s: %w", subject, err)
		}
		ev, err := decode(msg.Subject(), md.Sequence.Stream, msg.Data())
		if err != nil {
			return err
		}
		if !f.Match(ev) {
			continue
		}
		if err := fn(Item{Seq: md.Sequence.Stream, Event: ev}); err != nil {
			return err
		}
	}
}

// filterSubject is the subject List and Watch read: one message's events,
// or every event of the tenant.
func filterSubject(tenant, messageID string) (string, error) {
	if !queue.IsSubjectToken(tenant) {
		return "", fmt.Errorf("eventlog: invalid tenant %q", tenant)
	}
	if messageID == "" {
		// Event subjects are <prefix>.<tenant>.<message>.<index>, so a
		// wildcard message token selects the tenant's whole subtree.
		return queue.MessageEventsFilter(tenant, "*"), nil
	}
	if !queue.IsSubjectToken(messageID) {
		return "", fmt.Errorf("eventlog: invalid message id %q", messageID)
	}
	return queue.MessageEventsFilter(tenant, messageID), nil
}

func consumerConfig(subject string) jetstream.OrderedConsumerConfig {
	return jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{subject},
		InactiveThreshold: consumerIdle,
	}
}

// release stops the iterator (nil if it was never started) and deletes the
// consumer rather than leaving it to its inactivity timeout. It uses its own
// deadline because it runs after ctx may have ended. Stopping ends the
// iterator's goroutines by themselves; release does not wait for them, as
// this client's Closed channel is unreliable for Messages iterators (it is
// only closed if the subscription is already gone when asked).
func (r *Reader) release(ctx context.Context, cons jetstream.Consumer, it jetstream.MessagesContext) {
	if it != nil {
		it.Stop()
	}
	if info := cons.CachedInfo(); info != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		// A failure leaves the consumer to its InactiveThreshold.
		_ = r.js.DeleteConsumer(dctx, queue.EventsStream, info.Name)
	}
}

func decode(subject string, seq uint64, data []byte) (*postflowv1.Event, error) {
	ev := &postflowv1.Event{}
	if err := proto.Unmarshal(data, ev); err != nil {
		return nil, fmt.Errorf("eventlog: decode event %s (sequence %d): %w", subject, seq, err)
	}
	return ev, nil
}

// Cursors are "c" and the lower-case base32 of 12 bytes: the sequence,
// big-endian, and a CRC-32 of it seeded with cursorDomain. The checksum
// makes a mangled token fail to decode instead of naming another position;
// it is no protection against a forged one, which is harmless: a cursor
// only names a position in the caller's own tenant's events.
const (
	cursorPrefix = "c"
	cursorDomain = "postflow.eventlog.cursor.v1"
)

var cursorEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

var cursorSeed = crc32.ChecksumIEEE([]byte(cursorDomain))

func cursorSum(seq []byte) uint32 { return crc32.Update(cursorSeed, crc32.IEEETable, seq) }

// EncodeCursor returns the opaque page token or watch cursor for sequence
// seq; seq 0 (the start) is the empty string.
func EncodeCursor(seq uint64) string {
	if seq == 0 {
		return ""
	}
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], seq)
	binary.BigEndian.PutUint32(b[8:], cursorSum(b[:8]))
	return cursorPrefix + cursorEncoding.EncodeToString(b[:])
}

// DecodeCursor returns the sequence of a cursor made by EncodeCursor: 0 for
// the empty string, ErrBadCursor for anything EncodeCursor cannot return.
func DecodeCursor(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	body, ok := strings.CutPrefix(s, cursorPrefix)
	if !ok {
		return 0, ErrBadCursor
	}
	b, err := cursorEncoding.DecodeString(body)
	if err != nil || len(b) != 12 {
		return 0, ErrBadCursor
	}
	seq := binary.BigEndian.Uint64(b[:8])
	// Re-encoding rejects what the decoder tolerates: line breaks and
	// non-zero trailing bits.
	if binary.BigEndian.Uint32(b[8:]) != cursorSum(b[:8]) || seq == 0 || EncodeCursor(seq) != s {
		return 0, ErrBadCursor
	}
	return seq, nil
}
