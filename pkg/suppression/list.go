package suppression

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

const (
	// DefaultPageSize is the page size List uses for a limit of 0 or less.
	DefaultPageSize = 100
	// MaxPageSize is the largest page List returns; larger limits are
	// lowered to it.
	MaxPageSize = 1000

	// maxScan bounds the stream messages one List call reads, so a filter
	// matching few entries cannot make one call walk a whole large list. A
	// call reaching it returns a short page with a next-page token.
	maxScan = 10 * MaxPageSize

	// listInactive is when the server deletes a List consumer whose explicit
	// delete got lost. No List call should take that long.
	listInactive = time.Minute

	// maxStalls bounds the empty pulls List retries while the server
	// reports messages pending.
	maxStalls = 3

	// tokenVersion starts every page token, so the format can change.
	tokenVersion = 1
)

// List returns up to limit live entries of tenant, only those with reason
// unless reason is SUPPRESSION_REASON_UNSPECIFIED, starting at pageToken (""
// for the first page), and the token of the next page, "" when this page is
// the last. limit <= 0 means DefaultPageSize and is capped at MaxPageSize.
// A page may hold fewer than limit entries, even none, with a next-page
// token; only an empty token ends the listing.
//
// Pages walk the bucket's stream in sequence order with a subject filter on
// the tenant's keys; the token is the next stream sequence. With History 1
// the stream holds only the latest message per key, and a key's sequence
// changes only when it is replaced, so an entry present for the whole
// listing keeps its place and is returned exactly once.
//
// A page is read through an ephemeral in-memory consumer (create, a no-wait
// pull, delete: three round trips for a page without filtered-out entries)
// rather than by direct gets, which cost one round trip per entry. Delete and purge
// markers and TTL-expiry markers are skipped.
func (s *Store) List(ctx context.Context, tenant string, reason postflowv1.SuppressionReason, pageToken string, limit int) ([]*postflowv1.Suppression, string, error) {
	if err := checkTenant(tenant); err != nil {
		return nil, "", err
	}
	if !knownReason(reason) {
		return nil, "", fmt.Errorf("%w: reason %v", ErrInvalidArgument, reason)
	}
	start, err := decodeToken(pageToken)
	if err != nil {
		return nil, "", err
	}
	if limit <= 0 {
		limit = DefaultPageSize
	}
	limit = min(limit, MaxPageSize)

	cons, err := s.js.CreateConsumer(ctx, streamName, jetstream.ConsumerConfig{
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       start,
		FilterSubject:     subjectPrefix + tenant + ".>",
		AckPolicy:         jetstream.AckNonePolicy,
		MemoryStorage:     true,
		Replicas:          1,
		InactiveThreshold: listInactive,
	})
	if err != nil {
		return nil, "", fmt.Errorf("suppression: list tenant %s: %w", tenant, err)
	}
	defer s.deleteConsumer(ctx, cons.CachedInfo().Name)

	now := s.now()
	pending := cons.CachedInfo().NumPending
	out := make([]*postflowv1.Suppression, 0, min(uint64(limit), pending))
	next, scanned, stalls := start, 0, 0
	for pending > 0 && len(out) < limit && scanned < maxScan {
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
		batch, err := cons.FetchNoWait(min(limit, maxScan-scanned))
		if err != nil {
			return nil, "", fmt.Errorf("suppression: list tenant %s: %w", tenant, err)
		}
		got := 0
		for m := range batch.Messages() {
			meta, err := m.Metadata()
			if err != nil {
				return nil, "", fmt.Errorf("suppression: list tenant %s: %w", tenant, err)
			}
			got++
			scanned++
			next, pending = meta.Sequence.Stream+1, meta.NumPending
			e, err := listed(m, reason, now)
			if err != nil {
				return nil, "", fmt.Errorf("suppression: list tenant %s: %s: %w", tenant, m.Subject(), err)
			}
			if e != nil {
				out = append(out, e)
				if len(out) == limit {
					break
				}
			}
		}
		if err := batch.Error(); err != nil {
			return nil, "", fmt.Errorf("suppression: list tenant %s: %w", tenant, err)
		}
		if got > 0 {
			continue
		}
		// A no-wait pull ends with no message when the messages pending were
		// removed meanwhile, when the server had not yet counted messages
		// just stored (it answers no-wait pulls from its running count), and
		// when the reply missed the client's one-second timer. Only the
		// server can tell; ask it, and pull again if messages are pending.
		if scanned > 0 {
			break // return what was read; the next page resumes at next
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return nil, "", fmt.Errorf("suppression: list tenant %s: %w", tenant, err)
		}
		pending = info.NumPending
		if pending > 0 {
			if stalls++; stalls > maxStalls {
				return nil, "", fmt.Errorf("suppression: list tenant %s: no message delivered while %d pending", tenant, pending)
			}
		}
	}
	token := ""
	if pending > 0 {
		token = encodeToken(next)
	}
	return out, token, nil
}

// deleteConsumer deletes a List consumer, even when ctx is already done.
// A failure is left to the consumer's inactivity threshold.
func (s *Store) deleteConsumer(ctx context.Context, name string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = s.js.DeleteConsumer(ctx, streamName, name)
}

// listed returns the entry m holds if it is live and matches reason, or nil.
func listed(m jetstream.Msg, reason postflowv1.SuppressionReason, now time.Time) (*postflowv1.Suppression, error) {
	// Delete and purge markers carry KV-Operation; the markers the server
	// writes when a key's TTL runs out carry Nats-Marker-Reason.
	if h := m.Headers(); h.Get("KV-Operation") != "" || h.Get(jetstream.MarkerReasonHeader) != "" {
		return nil, nil
	}
	e, err := decode(m.Data())
	if err != nil {
		return nil, err
	}
	if expired(e, now) {
		return nil, nil
	}
	if reason != postflowv1.SuppressionReason_SUPPRESSION_REASON_UNSPECIFIED && e.GetReason() != reason {
		return nil, nil
	}
	return e, nil
}

// A page token is base64url of tokenVersion followed by the next stream
// sequence as 8 big-endian bytes.
func encodeToken(seq uint64) string {
	var b [9]byte
	b[0] = tokenVersion
	binary.BigEndian.PutUint64(b[1:], seq)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// decodeToken returns the stream sequence a page starts at: 1 for "".
func decodeToken(token string) (uint64, error) {
	if token == "" {
		return 1, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) != 9 || b[0] != tokenVersion {
		return 0, fmt.Errorf("%w %q", ErrBadPageToken, token)
	}
	seq := binary.BigEndian.Uint64(b[1:])
	if seq == 0 {
		return 0, fmt.Errorf("%w %q", ErrBadPageToken, token)
	}
	return seq, nil
}
