package suppression_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/suppression"
	"github.com/postflow/postflow/pkg/testenv"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

const (
	bounce      = postflowv1.SuppressionReason_SUPPRESSION_REASON_BOUNCE
	complaint   = postflowv1.SuppressionReason_SUPPRESSION_REASON_COMPLAINT
	unsubscribe = postflowv1.SuppressionReason_SUPPRESSION_REASON_UNSUBSCRIBE
	manual      = postflowv1.SuppressionReason_SUPPRESSION_REASON_MANUAL
	anyReason   = postflowv1.SuppressionReason_SUPPRESSION_REASON_UNSPECIFIED
)

// clock is a settable clock for expiry tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *clock { return &clock{t: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is one embedded server with a Store on it.
type env struct {
	srv   *testenv.JetStream
	js    jetstream.JetStream
	store *suppression.Store
}

func newEnv(t testing.TB, now func() time.Time) *env {
	t.Helper()
	srv := testenv.StartJetStream(t)
	js, err := jetstream.New(srv.Connect(t))
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	st, err := suppression.Open(t.Context(), js, suppression.Config{}, now)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return &env{srv: srv, js: js, store: st}
}

func entry(addr string, reason postflowv1.SuppressionReason) *postflowv1.Suppression {
	return &postflowv1.Suppression{Address: addr, Reason: reason}
}

func mustAdd(t testing.TB, st *suppression.Store, tenant string, e *postflowv1.Suppression) *postflowv1.Suppression {
	t.Helper()
	got, err := st.Add(t.Context(), tenant, e)
	if err != nil {
		t.Fatalf("Add(%s, %v): %v", tenant, e, err)
	}
	return got
}

func mustGet(t testing.TB, st *suppression.Store, tenant, addr string) *postflowv1.Suppression {
	t.Helper()
	got, err := st.Get(t.Context(), tenant, addr)
	if err != nil {
		t.Fatalf("Get(%s, %s): %v", tenant, addr, err)
	}
	return got
}

// addMany adds n entries "user<i>@<domain>" with reasons cycling through
// bounce, complaint, unsubscribe, manual, concurrently.
func addMany(t testing.TB, st *suppression.Store, tenant, domain string, n int) {
	t.Helper()
	reasons := []postflowv1.SuppressionReason{bounce, complaint, unsubscribe, manual}
	g, ctx := errgroup.WithContext(t.Context())
	g.SetLimit(64)
	for i := range n {
		g.Go(func() error {
			_, err := st.Add(ctx, tenant, entry(fmt.Sprintf("user%d@%s", i, domain), reasons[i%len(reasons)]))
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("adding %d entries: %v", n, err)
	}
}

// eventually calls f every 20ms until it returns nil, failing the test with
// f's last error after timeout.
func eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", timeout, err)
		}
		<-tick.C
	}
}

func TestAddGetRemove(t *testing.T) {
	t.Parallel()
	clk := newClock(time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC))
	e := newEnv(t, clk.Now)
	ctx := t.Context()

	if got := mustGet(t, e.store, "acme", "bob@example.com"); got != nil {
		t.Fatalf("Get before Add = %v, want nil", got)
	}
	in := &postflowv1.Suppression{
		Address:   " Bob@Example.com ",
		Reason:    bounce,
		MessageId: "msg-1",
		Detail:    "550 5.1.1 no such user",
	}
	stored := mustAdd(t, e.store, "acme", in)
	want := &postflowv1.Suppression{
		Address:   "bob@example.com",
		Reason:    bounce,
		MessageId: "msg-1",
		Detail:    "550 5.1.1 no such user",
		CreatedAt: timestamppb.New(clk.Now()),
	}
	if !proto.Equal(stored, want) {
		t.Errorf("Add returned %v, want %v", stored, want)
	}
	if in.GetAddress() != " Bob@Example.com " || in.CreatedAt != nil {
		t.Errorf("Add modified its argument: %v", in)
	}
	if got := mustGet(t, e.store, "acme", "bob@example.com"); !proto.Equal(got, want) {
		t.Errorf("Get = %v, want %v", got, want)
	}

	// Add replaces, keeping a CreatedAt the caller set.
	created := timestamppb.New(clk.Now().Add(-time.Hour))
	mustAdd(t, e.store, "acme", &postflowv1.Suppression{Address: "bob@example.com", Reason: manual, CreatedAt: created})
	got := mustGet(t, e.store, "acme", "bob@example.com")
	if got.GetReason() != manual || !proto.Equal(got.GetCreatedAt(), created) || got.GetMessageId() != "" {
		t.Errorf("after replacing, Get = %v, want reason MANUAL, created_at %v, no message id", got, created)
	}

	removed, err := e.store.Remove(ctx, "acme", "BOB@example.com")
	if err != nil || !removed {
		t.Fatalf("Remove = %v, %v; want true, nil", removed, err)
	}
	if got := mustGet(t, e.store, "acme", "bob@example.com"); got != nil {
		t.Errorf("Get after Remove = %v, want nil", got)
	}
	removed, err = e.store.Remove(ctx, "acme", "bob@example.com")
	if err != nil || removed {
		t.Errorf("second Remove = %v, %v; want false, nil", removed, err)
	}
	removed, err = e.store.Remove(ctx, "acme", "never@example.com")
	if err != nil || removed {
		t.Errorf("Remove of an address never added = %v, %v; want false, nil", removed, err)
	}

	// An address can be added again after removal.
	mustAdd(t, e.store, "acme", entry("bob@example.com", complaint))
	if got := mustGet(t, e.store, "acme", "bob@example.com"); got.GetReason() != complaint {
		t.Errorf("Get after re-adding = %v, want reason COMPLAINT", got)
	}
}

func TestCaseInsensitive(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	mustAdd(t, e.store, "acme", entry("Alice.Smith@Example.COM", unsubscribe))
	for _, addr := range []string{"alice.smith@example.com", "ALICE.SMITH@EXAMPLE.COM", "  aLiCe.SmItH@eXaMpLe.CoM"} {
		got := mustGet(t, e.store, "acme", addr)
		if got.GetAddress() != "alice.smith@example.com" {
			t.Errorf("Get(%q) = %v, want the entry of alice.smith@example.com", addr, got)
		}
	}
	mustAdd(t, e.store, "acme", entry("user@Bücher.de", manual))
	if got := mustGet(t, e.store, "acme", "USER@xn--bcher-kva.de"); got.GetAddress() != "user@xn--bcher-kva.de" {
		t.Errorf("Get by A-label = %v, want the entry added by U-label", got)
	}
	entries, _, err := e.store.List(t.Context(), "acme", anyReason, "", 0)
	if err != nil || len(entries) != 2 {
		t.Fatalf("List = %v, %v; want the 2 entries (one per address)", entries, err)
	}
}

func TestTenantIsolation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := t.Context()
	mustAdd(t, e.store, "a", entry("shared@example.com", bounce))
	mustAdd(t, e.store, "ab", entry("shared@example.com", complaint))
	mustAdd(t, e.store, "ab", entry("only-ab@example.com", complaint))

	if got := mustGet(t, e.store, "a", "only-ab@example.com"); got != nil {
		t.Errorf("tenant a sees tenant ab's entry: %v", got)
	}
	if got := mustGet(t, e.store, "a", "shared@example.com"); got.GetReason() != bounce {
		t.Errorf("tenant a's entry = %v, want reason BOUNCE", got)
	}
	if got := mustGet(t, e.store, "ab", "shared@example.com"); got.GetReason() != complaint {
		t.Errorf("tenant ab's entry = %v, want reason COMPLAINT", got)
	}
	listA, _, err := e.store.List(ctx, "a", anyReason, "", 0)
	if err != nil || len(listA) != 1 || listA[0].GetReason() != bounce {
		t.Errorf("List(a) = %v, %v; want only a's entry", listA, err)
	}
	found, err := e.store.Check(ctx, "a", []string{"shared@example.com", "only-ab@example.com"})
	if err != nil || len(found) != 1 || found["shared@example.com"].GetReason() != bounce {
		t.Errorf("Check(a) = %v, %v; want only a's shared entry", found, err)
	}

	if removed, err := e.store.Remove(ctx, "ab", "shared@example.com"); err != nil || !removed {
		t.Fatalf("Remove(ab) = %v, %v", removed, err)
	}
	if got := mustGet(t, e.store, "a", "shared@example.com"); got == nil {
		t.Error("removing tenant ab's entry removed tenant a's")
	}
	if removed, err := e.store.Remove(ctx, "a", "only-ab@example.com"); err != nil || removed {
		t.Errorf("Remove(a) of ab's address = %v, %v; want false, nil", removed, err)
	}
	if got := mustGet(t, e.store, "ab", "only-ab@example.com"); got == nil {
		t.Error("tenant a's Remove removed tenant ab's entry")
	}
}

func TestInvalidArguments(t *testing.T) {
	t.Parallel()
	clk := newClock(time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC))
	e := newEnv(t, clk.Now)
	ctx := t.Context()

	for _, tenant := range []string{"", "a.b", "a*", "a>", ">", "a b", "a\tb", "tenänt", "a@b"} {
		if _, err := e.store.Add(ctx, tenant, entry("x@example.com", bounce)); !errors.Is(err, suppression.ErrInvalidTenant) {
			t.Errorf("Add with tenant %q: error %v, want ErrInvalidTenant", tenant, err)
		}
		if _, err := e.store.Get(ctx, tenant, "x@example.com"); !errors.Is(err, suppression.ErrInvalidTenant) {
			t.Errorf("Get with tenant %q: error %v, want ErrInvalidTenant", tenant, err)
		}
		if _, err := e.store.Remove(ctx, tenant, "x@example.com"); !errors.Is(err, suppression.ErrInvalidTenant) {
			t.Errorf("Remove with tenant %q: error %v, want ErrInvalidTenant", tenant, err)
		}
		if _, err := e.store.Check(ctx, tenant, []string{"x@example.com"}); !errors.Is(err, suppression.ErrInvalidTenant) {
			t.Errorf("Check with tenant %q: error %v, want ErrInvalidTenant", tenant, err)
		}
		if _, _, err := e.store.List(ctx, tenant, anyReason, "", 0); !errors.Is(err, suppression.ErrInvalidTenant) {
			t.Errorf("List with tenant %q: error %v, want ErrInvalidTenant", tenant, err)
		}
	}
	for _, tenant := range []string{"default", "Tenant-1", "a_b", "a/b", "a=b"} {
		if _, err := e.store.Add(ctx, tenant, entry("x@example.com", bounce)); err != nil {
			t.Errorf("Add with tenant %q: %v", tenant, err)
		}
	}

	if _, err := e.store.Get(ctx, "acme", "not an address"); !errors.Is(err, suppression.ErrInvalidAddress) {
		t.Errorf("Get of a bad address: error %v, want ErrInvalidAddress", err)
	}
	if _, err := e.store.Remove(ctx, "acme", "@"); !errors.Is(err, suppression.ErrInvalidAddress) {
		t.Errorf("Remove of a bad address: error %v, want ErrInvalidAddress", err)
	}

	now := clk.Now()
	bad := []struct {
		name string
		e    *postflowv1.Suppression
		want error
	}{
		{"nil entry", nil, suppression.ErrInvalidEntry},
		{"bad address", entry("nobody", bounce), suppression.ErrInvalidAddress},
		{"unspecified reason", entry("x@example.com", anyReason), suppression.ErrInvalidEntry},
		{"unknown reason", entry("x@example.com", postflowv1.SuppressionReason(99)), suppression.ErrInvalidEntry},
		{"expires now", &postflowv1.Suppression{Address: "x@example.com", Reason: bounce, ExpiresAt: timestamppb.New(now)}, suppression.ErrInvalidEntry},
		{"expired", &postflowv1.Suppression{Address: "x@example.com", Reason: bounce, ExpiresAt: timestamppb.New(now.Add(-time.Second))}, suppression.ErrInvalidEntry},
		{"invalid expires_at", &postflowv1.Suppression{Address: "x@example.com", Reason: bounce, ExpiresAt: &timestamppb.Timestamp{Nanos: -1}}, suppression.ErrInvalidEntry},
		{"invalid created_at", &postflowv1.Suppression{Address: "x@example.com", Reason: bounce, CreatedAt: &timestamppb.Timestamp{Seconds: 1 << 62}}, suppression.ErrInvalidEntry},
	}
	for _, tc := range bad {
		_, err := e.store.Add(ctx, "acme", tc.e)
		if !errors.Is(err, tc.want) || !errors.Is(err, suppression.ErrInvalidArgument) {
			t.Errorf("Add %s: error %v, want %v", tc.name, err, tc.want)
		}
	}
	if got := mustGet(t, e.store, "acme", "x@example.com"); got != nil {
		t.Errorf("a refused Add stored %v", got)
	}
	if _, _, err := e.store.List(ctx, "acme", postflowv1.SuppressionReason(99), "", 0); !errors.Is(err, suppression.ErrInvalidArgument) {
		t.Errorf("List with an unknown reason: error %v, want ErrInvalidArgument", err)
	}
}

func TestExpiry(t *testing.T) {
	t.Parallel()
	clk := newClock(time.Date(2031, 6, 1, 12, 0, 0, 0, time.UTC))
	e := newEnv(t, clk.Now)
	ctx := t.Context()
	start := clk.Now()

	expiring := &postflowv1.Suppression{Address: "temp@example.com", Reason: unsubscribe, ExpiresAt: timestamppb.New(start.Add(time.Hour))}
	mustAdd(t, e.store, "acme", expiring)
	mustAdd(t, e.store, "acme", entry("forever@example.com", bounce))
	mustAdd(t, e.store, "acme", &postflowv1.Suppression{Address: "later@example.com", Reason: manual, ExpiresAt: timestamppb.New(start.Add(48 * time.Hour))})
	addrs := []string{"temp@example.com", "forever@example.com", "later@example.com"}

	clk.Advance(time.Hour - time.Nanosecond)
	if got := mustGet(t, e.store, "acme", "temp@example.com"); got == nil {
		t.Fatal("entry gone 1ns before it expires")
	}
	if found, err := e.store.Check(ctx, "acme", addrs); err != nil || len(found) != 3 {
		t.Fatalf("Check before expiry = %v, %v; want 3 entries", found, err)
	}

	clk.Advance(time.Nanosecond) // now == ExpiresAt: expired
	if got := mustGet(t, e.store, "acme", "temp@example.com"); got != nil {
		t.Errorf("Get at ExpiresAt = %v, want nil", got)
	}
	found, err := e.store.Check(ctx, "acme", addrs)
	if err != nil || len(found) != 2 || found["temp@example.com"] != nil {
		t.Errorf("Check after expiry = %v, %v; want forever and later only", found, err)
	}
	entries, token, err := e.store.List(ctx, "acme", anyReason, "", 0)
	if err != nil || token != "" || len(entries) != 2 {
		t.Errorf("List after expiry = %v, %q, %v; want 2 entries on one page", entries, token, err)
	}
	for _, en := range entries {
		if en.GetAddress() == "temp@example.com" {
			t.Errorf("List returned the expired entry %v", en)
		}
	}
	if removed, err := e.store.Remove(ctx, "acme", "temp@example.com"); err != nil || removed {
		t.Errorf("Remove of an expired entry = %v, %v; want false, nil", removed, err)
	}

	// An expired address can be added again.
	mustAdd(t, e.store, "acme", entry("temp@example.com", complaint))
	if got := mustGet(t, e.store, "acme", "temp@example.com"); got.GetReason() != complaint {
		t.Errorf("re-added entry = %v, want reason COMPLAINT", got)
	}

	clk.Advance(47 * time.Hour)
	if got := mustGet(t, e.store, "acme", "later@example.com"); got != nil {
		t.Errorf("Get after 48h = %v, want nil", got)
	}
	if got := mustGet(t, e.store, "acme", "forever@example.com"); got == nil {
		t.Error("entry without ExpiresAt expired")
	}
}

// TestTTLRemovesExpiredFromStorage checks that an entry's ExpiresAt also
// reaches storage as a per-message TTL (server >= 2.11), that List skips
// the marker the server leaves, and that Remove leaves only an expiring
// purge marker. It waits about a second of real time, polling.
func TestTTLRemovesExpiredFromStorage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := t.Context()
	kv, err := e.js.KeyValue(ctx, suppression.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	status, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if status.LimitMarkerTTL() <= 0 || status.History() != 1 {
		t.Fatalf("bucket LimitMarkerTTL %v, History %d; want per-message TTLs enabled and History 1", status.LimitMarkerTTL(), status.History())
	}

	mustAdd(t, e.store, "acme", &postflowv1.Suppression{Address: "short@example.com", Reason: bounce, ExpiresAt: timestamppb.New(time.Now().Add(time.Second))})
	mustAdd(t, e.store, "acme", entry("stays@example.com", bounce))
	stream, err := e.js.Stream(ctx, "KV_"+suppression.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, func() error {
		msg, err := stream.GetLastMsgForSubject(ctx, "$KV.SUPPRESSION.acme.>")
		if err != nil {
			return err
		}
		if msg.Header.Get(jetstream.MarkerReasonHeader) == "" {
			return fmt.Errorf("last message of tenant acme is %s with headers %v, not yet a TTL marker", msg.Subject, msg.Header)
		}
		return nil
	})
	if got := mustGet(t, e.store, "acme", "short@example.com"); got != nil {
		t.Errorf("Get of the TTL-expired entry = %v", got)
	}
	entries, token, err := e.store.List(ctx, "acme", anyReason, "", 0)
	if err != nil || token != "" || len(entries) != 1 || entries[0].GetAddress() != "stays@example.com" {
		t.Errorf("List with a TTL marker = %v, %q, %v; want only stays@example.com", entries, token, err)
	}

	if removed, err := e.store.Remove(ctx, "acme", "stays@example.com"); err != nil || !removed {
		t.Fatalf("Remove = %v, %v", removed, err)
	}
	msg, err := stream.GetLastMsgForSubject(ctx, "$KV.SUPPRESSION.acme.>")
	if err != nil {
		t.Fatal(err)
	}
	if msg.Header.Get("KV-Operation") != "PURGE" || msg.Header.Get(jetstream.MsgTTLHeader) == "" {
		t.Errorf("Remove left headers %v; want an expiring purge marker", msg.Header)
	}
	entries, token, err = e.store.List(ctx, "acme", anyReason, "", 0)
	if err != nil || token != "" || len(entries) != 0 {
		t.Errorf("List after Remove = %v, %q, %v; want nothing", entries, token, err)
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := t.Context()
	for i := range 10 {
		mustAdd(t, e.store, "acme", entry(fmt.Sprintf("s%d@example.com", i), bounce))
	}
	mustAdd(t, e.store, "other", entry("n0@example.com", bounce))

	var addrs []string
	for i := range 10 {
		addrs = append(addrs, fmt.Sprintf("S%d@Example.com", i), fmt.Sprintf("n%d@example.com", i))
	}
	addrs = append(addrs, "s3@example.com", " s3@EXAMPLE.com ", "not an address", "")
	found, err := e.store.Check(ctx, "acme", addrs)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 10 {
		t.Errorf("Check found %d entries, want 10: %v", len(found), found)
	}
	for i := range 10 {
		addr := fmt.Sprintf("s%d@example.com", i)
		if found[addr].GetAddress() != addr {
			t.Errorf("Check: entry of %s = %v", addr, found[addr])
		}
	}

	found, err = e.store.Check(ctx, "acme", nil)
	if err != nil || len(found) != 0 {
		t.Errorf("Check(nil) = %v, %v; want an empty map", found, err)
	}
	found, err = e.store.Check(ctx, "acme", []string{"n1@example.com"})
	if err != nil || found == nil || len(found) != 0 {
		t.Errorf("Check of an unsuppressed address = %v, %v; want an empty map", found, err)
	}

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := e.store.Check(canceled, "acme", addrs); !errors.Is(err, context.Canceled) {
		t.Errorf("Check with a canceled context: error %v, want context.Canceled", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := t.Context()
	g, gctx := errgroup.WithContext(ctx)
	for w := range 8 {
		g.Go(func() error {
			for i := range 50 {
				addr := fmt.Sprintf("u%d@example.com", i%10)
				switch (w + i) % 4 {
				case 0:
					if _, err := e.store.Add(gctx, "acme", entry(addr, bounce)); err != nil {
						return err
					}
				case 1:
					if _, err := e.store.Remove(gctx, "acme", addr); err != nil {
						return err
					}
				case 2:
					if _, err := e.store.Check(gctx, "acme", []string{addr, "x@example.com"}); err != nil {
						return err
					}
				case 3:
					if _, _, err := e.store.List(gctx, "acme", anyReason, "", 5); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	// After the dust settles, List and Get agree.
	entries, err := listAll(t, e.store, "acme", anyReason, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		addr := fmt.Sprintf("u%d@example.com", i)
		_, listed := entries[addr]
		if got := mustGet(t, e.store, "acme", addr); (got != nil) != listed {
			t.Errorf("%s: Get = %v but listed = %v", addr, got, listed)
		}
	}
}

func TestSurvivesRestart(t *testing.T) {
	t.Parallel()
	clk := newClock(time.Now())
	e := newEnv(t, clk.Now)
	ctx := t.Context()
	addMany(t, e.store, "acme", "restart.example", 200)
	mustAdd(t, e.store, "acme", &postflowv1.Suppression{Address: "temp@example.com", Reason: manual, ExpiresAt: timestamppb.New(clk.Now().Add(time.Hour))})
	if removed, err := e.store.Remove(ctx, "acme", "user7@restart.example"); err != nil || !removed {
		t.Fatalf("Remove = %v, %v", removed, err)
	}

	e.srv.Restart(t)

	// The client reconnects by itself; wait for the first read to work.
	eventually(t, 30*time.Second, func() error {
		got, err := e.store.Get(ctx, "acme", "user0@restart.example")
		if err == nil && got == nil {
			return errors.New("entry missing after restart")
		}
		return err
	})
	if got := mustGet(t, e.store, "acme", "temp@example.com"); got.GetExpiresAt() == nil {
		t.Errorf("expiring entry after restart = %v", got)
	}
	if got := mustGet(t, e.store, "acme", "user7@restart.example"); got != nil {
		t.Errorf("removed entry is back after restart: %v", got)
	}
	entries, err := listAll(t, e.store, "acme", anyReason, 1000, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 200 {
		t.Errorf("List after restart: %d entries, want 200", len(entries))
	}

	// Opening again (as another role would after the restart) keeps the data.
	st2, err := suppression.Open(ctx, e.js, suppression.Config{Replicas: 1}, clk.Now)
	if err != nil {
		t.Fatalf("Open after restart: %v", err)
	}
	if got := mustGet(t, st2, "acme", "user199@restart.example"); got == nil {
		t.Error("entry missing through a second Store")
	}
	clk.Advance(time.Hour)
	if got := mustGet(t, st2, "acme", "temp@example.com"); got != nil {
		t.Errorf("entry past its ExpiresAt after restart = %v", got)
	}
}

// TestOpenUpgradesBucket opens a bucket created without per-message TTLs, as
// by a server before 2.11 or an earlier Postflow: Open enables them and the
// entries stay.
func TestOpenUpgradesBucket(t *testing.T) {
	t.Parallel()
	srv := testenv.StartJetStream(t)
	js, err := jetstream.New(srv.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: suppression.Bucket, History: 1}); err != nil {
		t.Fatal(err)
	}
	st, err := suppression.Open(ctx, js, suppression.Config{}, nil)
	if err != nil {
		t.Fatalf("Open on an existing bucket: %v", err)
	}
	mustAdd(t, st, "acme", entry("old@example.com", bounce))

	st, err = suppression.Open(ctx, js, suppression.Config{}, nil)
	if err != nil {
		t.Fatalf("second Open: %v", err)
	}
	kv, err := js.KeyValue(ctx, suppression.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	status, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if status.LimitMarkerTTL() <= 0 {
		t.Errorf("LimitMarkerTTL after Open = %v, want per-message TTLs enabled", status.LimitMarkerTTL())
	}
	mustAdd(t, st, "acme", &postflowv1.Suppression{Address: "new@example.com", Reason: manual, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))})
	for _, addr := range []string{"old@example.com", "new@example.com"} {
		if got := mustGet(t, st, "acme", addr); got == nil {
			t.Errorf("%s missing", addr)
		}
	}
}
