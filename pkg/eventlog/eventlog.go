// Package eventlog writes and reads per-recipient delivery events in the
// EVENTS stream, and derives a recipient's status from its events. EVENTS is
// the source of truth for status: there is no other state store.
//
// Ordering: the api role publishes a message's "queued" events together
// with its delivery jobs, so a "queued" event is normally first but may, in
// rare interleavings, be stored after the worker's first outcome. Summaries
// therefore never let "queued" override another state, a final state is
// never overridden, and IsFinal looks past a trailing "queued".
package eventlog

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/postflow/postflow/pkg/queue"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// ErrNotFound is returned by Reader.Message when a message has no events.
var ErrNotFound = errors.New("eventlog: message not found")

// Final reports whether s is a final state: no event may follow it.
func Final(s postflowv1.RecipientState) bool {
	switch s {
	case postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED,
		postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED,
		postflowv1.RecipientState_RECIPIENT_STATE_EXPIRED,
		postflowv1.RecipientState_RECIPIENT_STATE_SUPPRESSED,
		postflowv1.RecipientState_RECIPIENT_STATE_CANCELED,
		postflowv1.RecipientState_RECIPIENT_STATE_FAILED:
		return true
	}
	return false
}

// RecipientID names recipient index of messageID.
func RecipientID(messageID string, index int) string {
	return messageID + "-" + strconv.Itoa(index)
}

// ParseRecipientID splits a recipient id into message id and index.
func ParseRecipientID(id string) (messageID string, index int, err error) {
	i := strings.LastIndexByte(id, '-')
	if i <= 0 {
		return "", 0, fmt.Errorf("eventlog: malformed recipient id %q", id)
	}
	digits := id[i+1:]
	n, err := strconv.Atoi(digits)
	if err != nil || n < 0 || strconv.Itoa(n) != digits {
		// Only the canonical decimal form RecipientID writes.
		return "", 0, fmt.Errorf("eventlog: malformed recipient id %q", id)
	}
	return id[:i], n, nil
}

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// EventID derives the stable id of a recipient's event from what makes it
// unique: the recipient, the attempt and the state. A redelivery that repeats
// the same attempt's outcome produces the same id, and the stream's
// deduplication window drops the copy.
func EventID(recipientID string, attempt int32, state postflowv1.RecipientState) string {
	h := sha256.Sum256([]byte(recipientID + "\x00" + strconv.Itoa(int(attempt)) + "\x00" + state.String()))
	return strings.ToLower(idEncoding.EncodeToString(h[:15]))
}

// Writer publishes events.
type Writer struct {
	pub *queue.Publisher
}

// NewWriter returns a Writer publishing through pub.
func NewWriter(pub *queue.Publisher) *Writer { return &Writer{pub: pub} }

// Write publishes evs and returns once JetStream acknowledged all of them.
// Each event's EventId, which the caller must set, is its Nats-Msg-Id.
// Errors wrap queue.ErrUnavailable or queue.ErrFull.
func (w *Writer) Write(ctx context.Context, evs ...*postflowv1.Event) error {
	msgs, err := Msgs(evs...)
	if err != nil {
		return err
	}
	bounces, err := BounceMsgs(evs...)
	if err != nil {
		return err
	}
	return w.pub.Publish(ctx, append(msgs, bounces...)...)
}

// BounceMsgs encodes the events that end a recipient in failure (bounced,
// expired, whether from an attempt or a DSN) and complaints as records for
// the BOUNCES stream, in the same batch as their
// events. The Nats-Msg-Id derives from the event's id, which is the same
// for every redelivery of the attempt, so a worker that dies between
// publishing and acking cannot make two records (TESTPLAN A10) as long as
// the redelivery comes within the stream's Duplicates window.
func BounceMsgs(evs ...*postflowv1.Event) ([]*nats.Msg, error) {
	var msgs []*nats.Msg
	for _, ev := range evs {
		switch {
		case ev.GetType() == postflowv1.EventType_EVENT_TYPE_COMPLAINT:
		case ev.GetState() == postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED, ev.GetState() == postflowv1.RecipientState_RECIPIENT_STATE_EXPIRED:
		default:
			continue
		}
		data, err := proto.Marshal(ev)
		if err != nil {
			return nil, fmt.Errorf("eventlog: marshal: %w", err)
		}
		m := nats.NewMsg(queue.BounceSubject(ev.GetTenant()))
		m.Data = data
		m.Header.Set(jetstream.MsgIDHeader, "bounce."+ev.GetEventId())
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// Msgs encodes events as NATS messages for the EVENTS stream, each with its
// subject and its EventId as Nats-Msg-Id, for callers that publish them in
// one batch with other messages.
func Msgs(evs ...*postflowv1.Event) ([]*nats.Msg, error) {
	msgs := make([]*nats.Msg, 0, len(evs))
	for _, ev := range evs {
		msgID, index, err := ParseRecipientID(ev.GetRecipientId())
		if err != nil {
			return nil, err
		}
		if msgID != ev.GetMessageId() {
			return nil, fmt.Errorf("eventlog: recipient id %q does not belong to message %q", ev.GetRecipientId(), ev.GetMessageId())
		}
		data, err := proto.Marshal(ev)
		if err != nil {
			return nil, fmt.Errorf("eventlog: marshal: %w", err)
		}
		m := nats.NewMsg(queue.EventSubject(ev.GetTenant(), ev.GetMessageId(), index))
		m.Data = data
		m.Header.Set(jetstream.MsgIDHeader, ev.GetEventId())
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// Reader reads events back.
type Reader struct {
	js jetstream.JetStream

	mu sync.Mutex
	st jetstream.Stream // looked up once: every read would otherwise cost a STREAM.INFO round trip
}

// NewReader returns a Reader.
func NewReader(js jetstream.JetStream) *Reader { return &Reader{js: js} }

// stream returns the EVENTS stream handle, looking it up on first use (and
// again after a failed lookup).
func (r *Reader) stream(ctx context.Context) (jetstream.Stream, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st == nil {
		st, err := r.js.Stream(ctx, queue.EventsStream)
		if err != nil {
			return nil, fmt.Errorf("eventlog: %w", err)
		}
		r.st = st
	}
	return r.st, nil
}

// walk calls fn with each event on subject (a subject or a filter) in
// stream order, with its stored message, until fn returns false. It reads
// with direct gets (the stream allows them, so any replica answers), one
// round trip per event plus one: no consumer is created, so reads leave
// nothing behind on the server. found reports whether any event was read.
func (r *Reader) walk(ctx context.Context, subject string, fn func(raw *jetstream.RawStreamMsg, ev *postflowv1.Event) bool) (found bool, err error) {
	st, err := r.stream(ctx)
	if err != nil {
		return false, err
	}
	for seq := uint64(1); ; {
		raw, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return found, nil
		}
		if err != nil {
			return found, fmt.Errorf("eventlog: read %s: %w", subject, err)
		}
		found = true
		ev, err := decodeRaw(raw)
		if err != nil {
			return found, err
		}
		if !fn(raw, ev) {
			return found, nil
		}
		seq = raw.Sequence + 1
	}
}

// lastOn returns the latest event on subject (a subject or a filter), nil
// if it has none.
func (r *Reader) lastOn(ctx context.Context, subject string) (*postflowv1.Event, error) {
	st, err := r.stream(ctx)
	if err != nil {
		return nil, err
	}
	raw, err := st.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("eventlog: last event of %s: %w", subject, err)
	}
	return decodeRaw(raw)
}

func decodeRaw(raw *jetstream.RawStreamMsg) (*postflowv1.Event, error) {
	return decode(raw.Subject, raw.Sequence, raw.Data)
}

// Message returns every event of one message in stream order, or
// ErrNotFound.
func (r *Reader) Message(ctx context.Context, tenant, messageID string) ([]*postflowv1.Event, error) {
	var evs []*postflowv1.Event
	found, err := r.walk(ctx, queue.MessageEventsFilter(tenant, messageID), func(_ *jetstream.RawStreamMsg, ev *postflowv1.Event) bool {
		evs = append(evs, ev)
		return true
	})
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, ErrNotFound
	}
	return evs, nil
}

// MessageLast returns the latest event of any recipient of one message, nil
// if it has none. Workers read it on a job's first delivery: when it is a
// "queued" event, nothing has happened to the message since Send (no
// attempt, no Cancel), so no recipient needs its own look-up.
func (r *Reader) MessageLast(ctx context.Context, tenant, messageID string) (*postflowv1.Event, error) {
	return r.lastOn(ctx, queue.MessageEventsFilter(tenant, messageID))
}

// Recipient returns the first event of one recipient of a message in any
// tenant, or ErrNotFound: the bounce role knows a message id and recipient
// index from a return path, and learns the tenant and address from it.
func (r *Reader) Recipient(ctx context.Context, messageID string, index int) (*postflowv1.Event, error) {
	var first *postflowv1.Event
	if _, err := r.walk(ctx, queue.EventSubject("*", messageID, index), func(_ *jetstream.RawStreamMsg, ev *postflowv1.Event) bool {
		first = ev
		return false
	}); err != nil {
		return nil, err
	}
	if first == nil {
		return nil, ErrNotFound
	}
	return first, nil
}

// Header returns the value of header name on the first of one message's
// events that carries it, walking them in stream order; "" when none does.
// It returns ErrNotFound when the message has no events.
func (r *Reader) Header(ctx context.Context, tenant, messageID, name string) (string, error) {
	var v string
	found, err := r.walk(ctx, queue.MessageEventsFilter(tenant, messageID), func(raw *jetstream.RawStreamMsg, _ *postflowv1.Event) bool {
		v = raw.Header.Get(name)
		return v == ""
	})
	if err == nil && !found {
		err = ErrNotFound
	}
	return v, err
}

// LastState returns the latest state recorded for one recipient, or
// RECIPIENT_STATE_UNSPECIFIED if it has no events.
func (r *Reader) LastState(ctx context.Context, tenant, messageID string, index int) (postflowv1.RecipientState, error) {
	ev, err := r.lastOn(ctx, queue.EventSubject(tenant, messageID, index))
	return ev.GetState(), err
}

// IsFinal reports whether one recipient has reached a final state.
func (r *Reader) IsFinal(ctx context.Context, tenant, messageID string, index int) (bool, error) {
	final, _, err := r.Progress(ctx, tenant, messageID, index)
	return final, err
}

// Progress reports whether one recipient has reached a final state, and the
// number of its latest recorded attempt (0 before the first). Workers number
// attempts from it rather than from JetStream's delivery count, which also
// counts jobs handed back unattempted (a throttled destination, say).
//
// The api role publishes a message's "queued" events and its jobs together,
// so in rare interleavings a "queued" event is stored after the worker's
// outcome; when the latest event is "queued", every event of the recipient
// is read.
func (r *Reader) Progress(ctx context.Context, tenant, messageID string, index int) (final bool, attempt int32, err error) {
	subject := queue.EventSubject(tenant, messageID, index)
	last, err := r.lastOn(ctx, subject)
	if err != nil || last == nil || isStateChange(last) && last.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_QUEUED {
		return Final(last.GetState()), last.GetAttempt(), err
	}
	// A late "queued" event, or a report (a complaint) that changes no
	// state, hides the state: read them all.
	_, err = r.walk(ctx, subject, func(_ *jetstream.RawStreamMsg, ev *postflowv1.Event) bool {
		attempt = max(attempt, ev.GetAttempt())
		final = final || isStateChange(ev) && Final(ev.GetState())
		return true
	})
	if err != nil {
		return false, 0, err
	}
	return final, attempt, nil
}

// isStateChange reports whether ev sets its recipient's state: every event
// but a complaint or an unsubscribe does.
func isStateChange(ev *postflowv1.Event) bool {
	switch ev.GetType() {
	case postflowv1.EventType_EVENT_TYPE_COMPLAINT, postflowv1.EventType_EVENT_TYPE_UNSUBSCRIBE:
		return false
	}
	return ev.GetState() != postflowv1.RecipientState_RECIPIENT_STATE_UNSPECIFIED
}

// supersedes reports whether ev replaces final, a recipient's final state.
// Only an asynchronous bounce does, and only a delivery: the receiving
// server accepted the message and later found it could not deliver it
// (RFC 3464 §1). Every other final state is kept.
func supersedes(final postflowv1.RecipientState, ev *postflowv1.Event) bool {
	return final == postflowv1.RecipientState_RECIPIENT_STATE_DELIVERED &&
		ev.GetType() == postflowv1.EventType_EVENT_TYPE_DSN &&
		ev.GetState() == postflowv1.RecipientState_RECIPIENT_STATE_BOUNCED
}

// Suppressed completes ev, which names a recipient, as the event that
// records it was not queued because it is on the suppression list (entry
// sup): final at once, with a synthesised reply (remote = false) saying
// why, so that status explains it.
func Suppressed(ev *postflowv1.Event, sup *postflowv1.Suppression) *postflowv1.Event {
	reason := strings.ToLower(strings.TrimPrefix(sup.GetReason().String(), "SUPPRESSION_REASON_"))
	ev.State = postflowv1.RecipientState_RECIPIENT_STATE_SUPPRESSED
	ev.EventId = EventID(ev.GetRecipientId(), 0, ev.State)
	ev.Reply = &postflowv1.SMTPReply{Code: 550, EnhancedCode: "5.7.1", Text: "recipient is on the suppression list (reason: " + reason + ")"}
	ev.Category = "suppressed"
	return ev
}

// ReportEventID derives the stable id of an event made from an
// asynchronous report (a DSN or a complaint) about one recipient. key
// identifies the report, e.g. its Message-ID: a report the remote sends
// twice, or the bounce role processes twice, makes one event.
func ReportEventID(recipientID string, t postflowv1.EventType, key string) string {
	h := sha256.Sum256([]byte(recipientID + "\x00report\x00" + t.String() + "\x00" + key))
	return strings.ToLower(idEncoding.EncodeToString(h[:15]))
}

// Apply returns a recipient's state after ev, given its state cur before
// it (UNSPECIFIED when it has none): reports that change no state leave
// it, a final state stays (but for a DSN bounce after a delivery), and a
// late "queued" never replaces a later state. Folding Apply over a
// recipient's events in stream order gives its state, however often any
// of them was redelivered.
func Apply(cur postflowv1.RecipientState, ev *postflowv1.Event) postflowv1.RecipientState {
	if applies(cur, ev) {
		return ev.GetState()
	}
	return cur
}

// applies reports whether ev sets the state of a recipient now in cur.
func applies(cur postflowv1.RecipientState, ev *postflowv1.Event) bool {
	switch {
	case !isStateChange(ev):
		return false
	case Final(cur) && !supersedes(cur, ev):
		return false
	case ev.GetState() == postflowv1.RecipientState_RECIPIENT_STATE_QUEUED && cur != postflowv1.RecipientState_RECIPIENT_STATE_UNSPECIFIED:
		return false
	}
	return true
}

// FinalEvent returns the event that holds one recipient's final state
// (by Apply's rules), nil when it has none.
func (r *Reader) FinalEvent(ctx context.Context, tenant, messageID string, index int) (*postflowv1.Event, error) {
	var final *postflowv1.Event
	state := postflowv1.RecipientState_RECIPIENT_STATE_UNSPECIFIED
	_, err := r.walk(ctx, queue.EventSubject(tenant, messageID, index), func(_ *jetstream.RawStreamMsg, ev *postflowv1.Event) bool {
		if applies(state, ev) {
			state = ev.GetState()
			if Final(state) {
				final = ev
			}
		}
		return true
	})
	return final, err
}

// RepublishBounce publishes again the BOUNCES record of ev, a final
// event, if it makes one. Its Nats-Msg-Id is the one Write used, so a
// record already stored is not stored twice (within the Duplicates
// window). A worker calls it for recipients it finds already final on a
// redelivered job: the event and its record go to two streams, and a
// crash between the two stores can leave the record missing.
func (w *Writer) RepublishBounce(ctx context.Context, ev *postflowv1.Event) error {
	msgs, err := BounceMsgs(ev)
	if err != nil || len(msgs) == 0 {
		return err
	}
	return w.pub.Publish(ctx, msgs...)
}

// Summarize derives each recipient's status from a message's events, given
// in stream order. Recipients are ordered by index.
func Summarize(evs []*postflowv1.Event) []*postflowv1.RecipientStatus {
	byID := map[string]*postflowv1.RecipientStatus{}
	attempts := map[string]map[int32]bool{}
	for _, ev := range evs {
		rs, ok := byID[ev.GetRecipientId()]
		if !ok {
			rs = &postflowv1.RecipientStatus{RecipientId: ev.GetRecipientId(), Recipient: ev.GetRecipient()}
			byID[ev.GetRecipientId()] = rs
			attempts[ev.GetRecipientId()] = map[int32]bool{}
		}
		rs.Events = append(rs.Events, ev)
		if ev.GetAttempt() > 0 {
			attempts[ev.GetRecipientId()][ev.GetAttempt()] = true
		}
		if rs.UpdatedAt == nil || ev.GetTime().AsTime().After(rs.UpdatedAt.AsTime()) {
			rs.UpdatedAt = ev.GetTime()
		}
		if !applies(rs.State, ev) {
			continue
		}
		rs.State = ev.GetState()
		if ev.GetReply() != nil {
			rs.LastReply = ev.GetReply()
			rs.MxHost = ev.GetMxHost()
			rs.Tls = ev.GetTls()
			rs.Category = ev.GetCategory()
		}
		rs.NextAttemptAt = ev.GetNextAttemptAt()
		if ev.GetPossibleDuplicate() {
			rs.PossibleDuplicate = true
		}
	}
	out := make([]*postflowv1.RecipientStatus, 0, len(byID))
	for id, rs := range byID {
		rs.Attempts = int32(len(attempts[id]))
		out = append(out, rs)
	}
	slices.SortFunc(out, func(a, b *postflowv1.RecipientStatus) int {
		_, ia, _ := ParseRecipientID(a.GetRecipientId())
		_, ib, _ := ParseRecipientID(b.GetRecipientId())
		return ia - ib
	})
	return out
}
