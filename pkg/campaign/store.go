// Package campaign stores bulk campaigns: the campaign itself (its
// template, once) in the CAMPAIGNS KV bucket, and one row per recipient in
// the CAMPAIGN_RECIPIENTS stream until the row is fed to OUTBOUND as a
// delivery job. See docs/campaigns.md for the whole design.
//
// A campaign's rows live on subjects ending in a hash of the normalised
// address, and the stream keeps at most one message per subject, refusing
// new ones (DiscardNewPerSubject): a second row for an address is dropped
// by the server at publish, with no set kept anywhere else. Rows are
// therefore added only while the campaign is a draft, before any row has
// been fed (which frees its subject).
package campaign

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/postflow/postflow/pkg/queue"
	"github.com/postflow/postflow/pkg/suppression"
	queuev1 "github.com/postflow/postflow/proto/postflow/queue/v1"
)

// Names of the bucket and stream.
const (
	Bucket           = "CAMPAIGNS"
	RecipientsStream = "CAMPAIGN_RECIPIENTS"
	recipientsPrefix = "postflow.campaign."
)

var (
	// ErrNotFound is a campaign that does not exist.
	ErrNotFound = errors.New("campaign: not found")
	// ErrExists is a Create for an id already taken.
	ErrExists = errors.New("campaign: already exists")
	// ErrNotDraft is a change that only a draft campaign allows.
	ErrNotDraft = errors.New("campaign: not a draft")
)

// Config sizes the storage.
type Config struct {
	// Replicas of the bucket and stream; 0 means 1.
	Replicas int
	// MaxRecipientBytes bounds the rows waiting to be fed, all campaigns
	// together; 0 means 8 GiB.
	MaxRecipientBytes int64
}

// Store reads and writes campaigns and their rows. It is safe for
// concurrent use.
type Store struct {
	js jetstream.JetStream
	kv jetstream.KeyValue
}

// Open creates (or updates) the bucket and the stream and returns a Store.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config) (*Store, error) {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.MaxRecipientBytes <= 0 {
		cfg.MaxRecipientBytes = 8 << 30
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Postflow campaigns: template, state and counters",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("campaign: bucket: %w", err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        RecipientsStream,
		Description: "Postflow campaign rows waiting to be fed to OUTBOUND; one per address per campaign",
		Subjects:    []string{recipientsPrefix + ">"},
		Retention:   jetstream.WorkQueuePolicy,
		// One row per address: a duplicate is refused, not stored.
		MaxMsgsPerSubject:    1,
		Discard:              jetstream.DiscardNew,
		DiscardNewPerSubject: true,
		MaxBytes:             cfg.MaxRecipientBytes,
		Storage:              jetstream.FileStorage,
		Replicas:             cfg.Replicas,
	}); err != nil {
		return nil, fmt.Errorf("campaign: stream: %w", err)
	}
	return &Store{js: js, kv: kv}, nil
}

func key(tenant, id string) (string, error) {
	if !queue.IsSubjectToken(tenant) || !queue.IsSubjectToken(id) {
		return "", fmt.Errorf("campaign: bad tenant %q or id %q", tenant, id)
	}
	return tenant + "." + id, nil
}

// Create stores c, a new campaign.
func (s *Store) Create(ctx context.Context, c *queuev1.Campaign) error {
	k, err := key(c.GetTenant(), c.GetId())
	if err != nil {
		return err
	}
	data, err := proto.Marshal(c)
	if err != nil {
		return err
	}
	if _, err := s.kv.Create(ctx, k, data); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return ErrExists
		}
		return fmt.Errorf("campaign: create: %w", err)
	}
	return nil
}

// Get returns a campaign, or ErrNotFound.
func (s *Store) Get(ctx context.Context, tenant, id string) (*queuev1.Campaign, error) {
	c, _, err := s.get(ctx, tenant, id)
	return c, err
}

func (s *Store) get(ctx context.Context, tenant, id string) (*queuev1.Campaign, uint64, error) {
	k, err := key(tenant, id)
	if err != nil {
		return nil, 0, err
	}
	e, err := s.kv.Get(ctx, k)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("campaign: get: %w", err)
	}
	c := &queuev1.Campaign{}
	if err := proto.Unmarshal(e.Value(), c); err != nil {
		return nil, 0, fmt.Errorf("campaign: decode %s: %w", k, err)
	}
	return c, e.Revision(), nil
}

// Update applies change to the stored campaign and stores the result, if
// no other writer changed it meanwhile; otherwise it reads again and
// retries. change may refuse by returning an error, which Update returns.
func (s *Store) Update(ctx context.Context, tenant, id string, change func(*queuev1.Campaign) error) (*queuev1.Campaign, error) {
	for {
		c, rev, err := s.get(ctx, tenant, id)
		if err != nil {
			return nil, err
		}
		if err := change(c); err != nil {
			return nil, err
		}
		data, err := proto.Marshal(c)
		if err != nil {
			return nil, err
		}
		k, _ := key(tenant, id)
		_, err = s.kv.Update(ctx, k, data, rev)
		if err == nil {
			return c, nil
		}
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
			return nil, fmt.Errorf("campaign: update: %w", err)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}

var hashEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// RowSubject is the subject of a campaign's row for addr: the hash of the
// normalised address (80 bits, so that distinct addresses of one campaign
// do not collide in practice) makes it one row per address.
func RowSubject(tenant, id, addr string) string {
	norm, err := suppression.Normalize(addr)
	if err != nil {
		norm = strings.ToLower(addr)
	}
	h := sha256.Sum256([]byte(norm))
	return recipientsPrefix + tenant + "." + id + "." + strings.ToLower(hashEncoding.EncodeToString(h[:10]))
}

// RowsFilter matches every row of one campaign.
func RowsFilter(tenant, id string) string {
	return recipientsPrefix + tenant + "." + id + ".>"
}

// Adder stores rows of one draft campaign, many publishes in flight at
// once. It is not safe for concurrent use; Flush ends it. Several Adders
// (in several processes) may add to one campaign at once: each numbers its
// rows from blocks of indexes it reserved in the campaign, so indexes
// never collide, though they may leave gaps.
type Adder struct {
	s           *Store
	tenant, id  string
	window      int
	next, limit int64 // the reserved block not yet used: [next, limit)
	pending     []jetstream.PubAckFuture
	added, dup  int64
	err         error
}

// Tuning of Adder: rows awaiting their acknowledgement at once, and
// indexes reserved per campaign update.
const (
	addWindow  = 4096
	indexBlock = 1 << 16
)

// NewAdder returns an Adder for a draft campaign.
func (s *Store) NewAdder(ctx context.Context, tenant, id string) (*Adder, error) {
	a := &Adder{s: s, tenant: tenant, id: id, window: addWindow}
	if err := a.reserve(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

// reserve takes the next block of indexes from the campaign.
func (a *Adder) reserve(ctx context.Context) error {
	c, err := a.s.Update(ctx, a.tenant, a.id, func(c *queuev1.Campaign) error {
		if c.GetState() != queuev1.CampaignState_CAMPAIGN_STATE_DRAFT {
			return ErrNotDraft
		}
		c.NextIndex += indexBlock
		return nil
	})
	if err != nil {
		return err
	}
	a.next, a.limit = c.GetNextIndex()-indexBlock, c.GetNextIndex()
	return nil
}

// Add queues one row. The address must already be valid. An error means
// the store failed; rows added before it may or may not be stored.
func (a *Adder) Add(ctx context.Context, addr string, vars map[string]string) error {
	if a.err != nil {
		return a.err
	}
	if a.next == a.limit {
		if err := a.reserve(ctx); err != nil {
			a.err = err
			return err
		}
	}
	data, err := proto.Marshal(&queuev1.CampaignRecipient{Index: a.next, Address: addr, Vars: vars})
	if err != nil {
		return err
	}
	m := nats.NewMsg(RowSubject(a.tenant, a.id, addr))
	m.Data = data
	f, err := a.s.js.PublishMsgAsync(m)
	if err != nil {
		a.err = fmt.Errorf("campaign: add: %w", err)
		return a.err
	}
	a.next++
	a.pending = append(a.pending, f)
	if len(a.pending) >= a.window {
		return a.settle(ctx, len(a.pending)/2)
	}
	return nil
}

// settle waits for the oldest n pending rows.
func (a *Adder) settle(ctx context.Context, n int) error {
	for _, f := range a.pending[:n] {
		select {
		case <-f.Ok():
			a.added++
		case err := <-f.Err():
			if isDuplicate(err) {
				a.dup++
				continue
			}
			if a.err == nil {
				a.err = fmt.Errorf("campaign: add: %w", err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	a.pending = append(a.pending[:0], a.pending[n:]...)
	return a.err
}

// isDuplicate reports the stream's refusal of a second row on a subject.
func isDuplicate(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrCodeMaxMsgsPerSubject
}

// jsErrCodeMaxMsgsPerSubject is nats-server's JSStreamStoreFailedF with
// "maximum messages per subject exceeded" (10077).
const jsErrCodeMaxMsgsPerSubject = 10077

// Flush waits for every row, records the counts in the campaign and
// returns them: rows stored and duplicates dropped by this Adder.
func (a *Adder) Flush(ctx context.Context) (added, duplicates int64, err error) {
	if err := a.settle(ctx, len(a.pending)); err != nil {
		return a.added, a.dup, err
	}
	// The counts are facts about stored rows, recorded whatever the state
	// is by now.
	_, err = a.s.Update(ctx, a.tenant, a.id, func(c *queuev1.Campaign) error {
		c.RecipientsAdded += a.added
		c.DuplicatesDropped += a.dup
		return nil
	})
	return a.added, a.dup, err
}

// List returns every campaign of tenant, in no particular order.
func (s *Store) List(ctx context.Context, tenant string) ([]*queuev1.Campaign, error) {
	if !queue.IsSubjectToken(tenant) {
		return nil, fmt.Errorf("campaign: bad tenant %q", tenant)
	}
	keys, err := s.kv.ListKeysFiltered(ctx, tenant+".*")
	if err != nil {
		return nil, fmt.Errorf("campaign: list: %w", err)
	}
	var out []*queuev1.Campaign
	for k := range keys.Keys() {
		c, err := s.Get(ctx, tenant, strings.TrimPrefix(k, tenant+"."))
		if errors.Is(err, ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// Cache is an in-memory copy of every campaign, kept current by a watch on
// the bucket: workers and feeders learn of a pause or a cancel within
// milliseconds, without a read per job. It is safe for concurrent use.
type Cache struct {
	mu    sync.RWMutex
	byKey map[string]*queuev1.Campaign
	ready chan struct{}
	subs  []chan<- *queuev1.Campaign
}

// Watch returns a Cache filled with every campaign and kept current until
// ctx ends. It returns once the initial values are loaded.
func (s *Store) Watch(ctx context.Context) (*Cache, error) {
	w, err := s.kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("campaign: watch: %w", err)
	}
	c := &Cache{byKey: map[string]*queuev1.Campaign{}, ready: make(chan struct{})}
	go func() {
		defer func() { _ = w.Stop() }()
		initial := true
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					// The end of the initial values.
					if initial {
						initial = false
						close(c.ready)
					}
					continue
				}
				c.apply(e)
			}
		}
	}()
	select {
	case <-c.ready:
		return c, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *Cache) apply(e jetstream.KeyValueEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(c.byKey, e.Key())
		return
	}
	v := &queuev1.Campaign{}
	if err := proto.Unmarshal(e.Value(), v); err != nil {
		return
	}
	c.byKey[e.Key()] = v
	for _, ch := range c.subs {
		select {
		case ch <- v:
		default: // a slow subscriber re-reads All
		}
	}
}

// Get returns the cached campaign, nil when there is none.
func (c *Cache) Get(tenant, id string) *queuev1.Campaign {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.byKey[tenant+"."+id]
}

// All returns every cached campaign.
func (c *Cache) All() []*queuev1.Campaign {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]*queuev1.Campaign, 0, len(c.byKey))
	for _, v := range c.byKey {
		out = append(out, v)
	}
	return out
}

// Subscribe returns a channel that receives campaigns as they change
// (best effort: a full channel skips an update, so receivers also poll
// All now and then).
func (c *Cache) Subscribe() <-chan *queuev1.Campaign {
	ch := make(chan *queuev1.Campaign, 64)
	c.mu.Lock()
	c.subs = append(c.subs, ch)
	c.mu.Unlock()
	return ch
}
