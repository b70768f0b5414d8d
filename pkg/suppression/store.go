package suppression

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// Bucket is the name of the KV bucket holding every tenant's list. Its keys
// are "<tenant>.<base64url of the normalized address>".
const Bucket = "SUPPRESSION"

const (
	// streamName and subjectPrefix are the bucket's stream and the subject
	// of a key minus the key, fixed by the KV layout (ADR-8). Add publishes
	// and List reads there directly; the Store needs a JetStream context
	// with the default API prefix (no domain), as the rest of Postflow uses.
	streamName    = "KV_" + Bucket
	subjectPrefix = "$KV." + Bucket + "."

	// markerTTL is how long the server keeps the marker it writes when a key
	// expires by TTL (the bucket's LimitMarkerTTL), and how long the purge
	// marker of Remove is kept. Nothing reads markers yet; they only need
	// to outlive any watcher's reconnect.
	markerTTL = time.Hour

	// maxMsgTTL bounds the per-message TTL. An entry expiring later is
	// stored without one and only its ExpiresAt applies; this keeps the
	// rounding in msgTTL from overflowing time.Duration.
	maxMsgTTL = 100 * 365 * 24 * time.Hour

	// checkConcurrency bounds the lookups Check has in flight.
	checkConcurrency = 16

	// removeAttempts bounds Remove's compare-and-delete retries when Adds
	// keep replacing the entry between its read and its delete.
	removeAttempts = 10
)

var (
	// ErrInvalidArgument is wrapped by every error about a caller's input;
	// the API maps it to INVALID_ARGUMENT.
	ErrInvalidArgument = errors.New("suppression: invalid argument")
	// ErrInvalidAddress is returned for an address Normalize refuses.
	ErrInvalidAddress = fmt.Errorf("%w: address", ErrInvalidArgument)
	// ErrInvalidTenant is returned for a tenant that cannot be a key token.
	ErrInvalidTenant = fmt.Errorf("%w: tenant", ErrInvalidArgument)
	// ErrInvalidEntry is returned by Add for a nil entry, an unspecified or
	// unknown reason, or an invalid or past timestamp.
	ErrInvalidEntry = fmt.Errorf("%w: entry", ErrInvalidArgument)
	// ErrBadPageToken is returned by List for a token it did not issue.
	ErrBadPageToken = fmt.Errorf("%w: page token", ErrInvalidArgument)
)

// Config configures the bucket.
type Config struct {
	// Replicas is the number of stream replicas of the bucket, 0 meaning 1:
	// 1 on the embedded server, 3 in a production cluster like the message
	// streams.
	Replicas int
}

// Store is the suppression list of every tenant. It is safe for concurrent
// use.
type Store struct {
	js  jetstream.JetStream
	kv  jetstream.KeyValue
	now func() time.Time
	// ttl tells whether the bucket accepts per-message TTLs (nats-server
	// 2.11 and later), used to drop expired entries from storage.
	ttl bool
}

// Open creates the bucket if it is missing, or updates its configuration to
// cfg, and returns a Store using it. now is the clock deciding expiry, nil
// meaning time.Now; it must be safe for concurrent use. Any number of
// processes may Open concurrently.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config, now func() time.Time) (*Store, error) {
	if cfg.Replicas < 0 {
		return nil, fmt.Errorf("suppression: replicas %d < 0", cfg.Replicas)
	}
	if now == nil {
		now = time.Now
	}
	kvCfg := jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Postflow suppression lists",
		History:     1, // List's stable pagination relies on one message per key
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		// LimitMarkerTTL enables per-message TTLs on the bucket.
		LimitMarkerTTL: markerTTL,
	}
	ttl := true
	kv, err := js.CreateOrUpdateKeyValue(ctx, kvCfg)
	if errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported) {
		// A server before 2.11: expiry then rests on ExpiresAt alone, and
		// expired entries stay in storage until replaced or removed.
		kvCfg.LimitMarkerTTL = 0
		ttl = false
		kv, err = js.CreateOrUpdateKeyValue(ctx, kvCfg)
	}
	if err != nil {
		return nil, fmt.Errorf("suppression: open bucket %s: %w", Bucket, err)
	}
	return &Store{js: js, kv: kv, now: now, ttl: ttl}, nil
}

// Add puts e on tenant's list, replacing any entry of the same address, and
// returns the entry as stored: a copy of e with Address normalized and
// CreatedAt set to now when unset. e itself is not modified. Reason must be
// one of the defined reasons other than unspecified; ExpiresAt, when set,
// must be after now.
//
// The value is published on the key's subject directly rather than with
// KeyValue.Put, because Put cannot carry a per-message TTL and Create (which
// can) fails when the key exists, while Update cannot set one: Create-then-
// Update would leave replaced entries without a TTL, and purge-then-Create
// would briefly unsuppress the address. A plain publish is exactly Put with
// the TTL header, in one round trip. The TTL is ExpiresAt-now rounded up to
// whole seconds (the server's unit), so storage never drops an entry before
// it expires; ExpiresAt in the value stays authoritative.
func (s *Store) Add(ctx context.Context, tenant string, e *postflowv1.Suppression) (*postflowv1.Suppression, error) {
	if e == nil {
		return nil, fmt.Errorf("%w: nil", ErrInvalidEntry)
	}
	norm, k, err := keyFor(tenant, e.GetAddress())
	if err != nil {
		return nil, err
	}
	if r := e.GetReason(); r == postflowv1.SuppressionReason_SUPPRESSION_REASON_UNSPECIFIED || !knownReason(r) {
		return nil, fmt.Errorf("%w: reason %v", ErrInvalidEntry, r)
	}
	now := s.now()
	var ttl time.Duration
	if e.ExpiresAt != nil {
		if err := e.GetExpiresAt().CheckValid(); err != nil {
			return nil, fmt.Errorf("%w: expires_at: %w", ErrInvalidEntry, err)
		}
		exp := e.GetExpiresAt().AsTime()
		if !exp.After(now) {
			return nil, fmt.Errorf("%w: expires_at %s is not after now (%s)", ErrInvalidEntry, exp.Format(time.RFC3339), now.Format(time.RFC3339))
		}
		ttl = msgTTL(exp.Sub(now))
	}
	if e.CreatedAt != nil {
		if err := e.GetCreatedAt().CheckValid(); err != nil {
			return nil, fmt.Errorf("%w: created_at: %w", ErrInvalidEntry, err)
		}
	}

	stored := proto.CloneOf(e)
	stored.Address = norm
	if stored.CreatedAt == nil {
		stored.CreatedAt = timestamppb.New(now)
	}
	data, err := proto.Marshal(stored)
	if err != nil {
		return nil, fmt.Errorf("suppression: encode entry: %w", err)
	}
	msg := &nats.Msg{Subject: subjectPrefix + k, Data: data}
	opts := []jetstream.PublishOpt{jetstream.WithExpectStream(streamName)}
	if s.ttl && ttl > 0 {
		opts = append(opts, jetstream.WithMsgTTL(ttl))
	}
	if _, err := s.js.PublishMsg(ctx, msg, opts...); err != nil {
		return nil, fmt.Errorf("suppression: add %s for tenant %s: %w", norm, tenant, err)
	}
	return stored, nil
}

// msgTTL returns d rounded up to whole seconds, or 0 (no TTL) when d
// exceeds maxMsgTTL.
func msgTTL(d time.Duration) time.Duration {
	if d > maxMsgTTL {
		return 0
	}
	if r := d % time.Second; r != 0 {
		d += time.Second - r
	}
	return d
}

// Remove takes addr off tenant's list. removed is false when the address
// had no entry, or only an expired one (which is deleted from storage all
// the same).
//
// The delete is conditional on the revision read, so removed tells whether
// the entry actually deleted was live even when an Add races with Remove.
// It is a purge (the key's marker replaces its value) with a TTL when the
// server supports it, so removed addresses leave nothing in storage.
func (s *Store) Remove(ctx context.Context, tenant, addr string) (removed bool, err error) {
	norm, k, err := keyFor(tenant, addr)
	if err != nil {
		return false, err
	}
	for range removeAttempts {
		ent, err := s.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("suppression: remove %s for tenant %s: %w", norm, tenant, err)
		}
		// An entry that does not decode is removed and counted as present:
		// Get reports it as an error, so it was not absent either.
		live := true
		if e, err := decode(ent.Value()); err == nil {
			live = !expired(e, s.now())
		}
		opts := []jetstream.KVDeleteOpt{jetstream.LastRevision(ent.Revision())}
		if s.ttl {
			opts = append(opts, jetstream.PurgeTTL(markerTTL))
		}
		err = s.kv.Purge(ctx, k, opts...)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("suppression: remove %s for tenant %s: %w", norm, tenant, err)
		}
		return live, nil
	}
	return false, fmt.Errorf("suppression: remove %s for tenant %s: entry replaced concurrently %d times", norm, tenant, removeAttempts)
}

// Get returns tenant's entry for addr, or nil when addr is not suppressed:
// it has no entry, or its entry's ExpiresAt is not after now.
func (s *Store) Get(ctx context.Context, tenant, addr string) (*postflowv1.Suppression, error) {
	_, k, err := keyFor(tenant, addr)
	if err != nil {
		return nil, err
	}
	return s.get(ctx, k)
}

func (s *Store) get(ctx context.Context, k string) (*postflowv1.Suppression, error) {
	ent, err := s.kv.Get(ctx, k)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("suppression: get %s: %w", k, err)
	}
	e, err := decode(ent.Value())
	if err != nil {
		return nil, fmt.Errorf("suppression: get %s: %w", k, err)
	}
	if expired(e, s.now()) {
		return nil, nil
	}
	return e, nil
}

// Check looks up addrs on tenant's list and returns the entries of the
// suppressed ones keyed by normalized address; an address absent from the
// map is not suppressed. Addresses Normalize refuses are not suppressed by
// construction (nothing can be stored under them), so they are left out
// rather than failing the whole call; a bad tenant is an error. Lookups run
// concurrently, at most 16 in flight, one KV direct get each.
func (s *Store) Check(ctx context.Context, tenant string, addrs []string) (map[string]*postflowv1.Suppression, error) {
	if err := checkTenant(tenant); err != nil {
		return nil, err
	}
	norms := make([]string, 0, len(addrs))
	seen := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		norm, err := Normalize(a)
		if err != nil || seen[norm] {
			continue
		}
		seen[norm] = true
		norms = append(norms, norm)
	}
	entries := make([]*postflowv1.Suppression, len(norms))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(checkConcurrency)
	for i, norm := range norms {
		g.Go(func() error {
			e, err := s.get(gctx, key(tenant, norm))
			entries[i] = e
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("suppression: check for tenant %s: %w", tenant, err)
	}
	found := make(map[string]*postflowv1.Suppression)
	for i, e := range entries {
		if e != nil {
			found[norms[i]] = e
		}
	}
	return found, nil
}

func decode(data []byte) (*postflowv1.Suppression, error) {
	e := new(postflowv1.Suppression)
	if err := proto.Unmarshal(data, e); err != nil {
		return nil, fmt.Errorf("decode entry: %w", err)
	}
	return e, nil
}

// expired reports whether e no longer applies at now.
func expired(e *postflowv1.Suppression, now time.Time) bool {
	return e.ExpiresAt != nil && !e.GetExpiresAt().AsTime().After(now)
}

func knownReason(r postflowv1.SuppressionReason) bool {
	_, ok := postflowv1.SuppressionReason_name[int32(r)]
	return ok
}
