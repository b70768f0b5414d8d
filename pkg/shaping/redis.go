package shaping

import (
	"cmp"
	"context"
	"crypto/rand"
	_ "embed" // the Lua scripts
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postflow/postflow/pkg/telemetry"
)

// The Redis key layout. P is RedisConfig.Prefix and d a destination name;
// every key of one destination carries the hash tag {d}, and each script
// touches one destination's keys only, so Redis Cluster works unchanged.
//
//	P:{d}:tat       string "tat,epoch": GCRA theoretical arrival time, µs by Redis TIME, and its rate epoch; expires when idle
//	P:{d}:r:<job>   string "slot,epoch": the slot reserved for job, µs, and its rate epoch; expires at slot + ReservationGrace; void in another epoch
//	P:{d}:adapt     hash: f (factor set at the last cut), at (its time, µs), reason; expires once recovered
//	P:{d}:conn      sorted set: lease id → expiry (ms); expires with its longest lease
//	P:{d}:meta      hash: name, n, per (ns), burst, conns: the configured limits, for Status; expires after metaTTL
//	P:workers       sorted set: worker id → liveness expiry (ms)
var (
	//go:embed reserve.lua
	reserveLua string
	//go:embed acquire.lua
	acquireLua string
	//go:embed throttle.lua
	throttleLua string
	//go:embed status.lua
	statusLua string
	//go:embed heartbeat.lua
	heartbeatLua string

	// Scripts run by EVALSHA; Script.Run falls back to EVAL on NOSCRIPT,
	// which also caches the script again, so a SCRIPT FLUSH or a restarted
	// server costs one extra round trip on the next call and no error.
	reserveScript   = redis.NewScript(reserveLua)
	acquireScript   = redis.NewScript(acquireLua)
	throttleScript  = redis.NewScript(throttleLua)
	statusScript    = redis.NewScript(statusLua)
	heartbeatScript = redis.NewScript(heartbeatLua)
)

const (
	// metaTTL keeps a destination listed by Status for a day after its
	// last use by any worker.
	metaTTL = 24 * time.Hour
	// registerEvery is how often a worker rewrites a destination's meta
	// hash while using it, so that it outlives metaTTL, and comes back
	// soon after a Redis restart lost it.
	registerEvery = time.Minute
	// maxReason bounds the throttling reply kept in Redis for Status.
	maxReason = 200
	// scanCount is the COUNT hint of Status's SCAN, and so the size of one
	// pipeline of status scripts.
	scanCount = 500
)

// ErrUnavailable is returned, wrapped, by Renew and Release of a lease
// taken from Redis while Redis is unreachable: the lease's state is
// unknown, and it expires at its last ttl unless renewed later.
var ErrUnavailable = errors.New("shaping: redis unavailable")

// RedisConfig configures a Redis limiter. Zero fields take the default
// documented on each.
type RedisConfig struct {
	// Adaptive sets how throttling replies cut a destination's rate;
	// zero fields take DefaultAdaptive's values. Every worker sharing a
	// Redis should use the same values: the state in Redis is the last
	// cut's factor and time, and each decision applies its caller's
	// Adaptive to it.
	Adaptive Adaptive
	// Prefix starts every key (default "postflow:shaping"). It must not
	// contain { or }, which would change the hash tags.
	Prefix string
	// Fallback decides while Redis is unreachable, with each
	// destination's limits divided among the live workers (see
	// FallbackLimits). Required: a Redis outage never means no limit.
	Fallback Limiter
	// WorkerID names this worker in the liveness set (default random:
	// "w-" and 12 hex digits); it must be unique among the workers
	// sharing a Redis.
	WorkerID string
	// Heartbeat is how often this worker renews its liveness (default
	// 5s); a worker not heard from for 3 heartbeats is no longer counted.
	Heartbeat time.Duration
	// Timeout bounds one Redis round trip of a decision (default 500ms):
	// a decision that would wait longer is better made locally.
	Timeout time.Duration
	// Retry is how often an unreachable Redis is tried again (default 1s).
	Retry time.Duration
	// ReservationGrace keeps a reserved slot valid this long after its
	// time (default 10m), for a job handed back to the queue that comes
	// back late; after it, the job takes a new slot.
	ReservationGrace time.Duration
	// AssumedWorkers is the live worker count assumed before any has been
	// seen, when Redis is unreachable from the start (default 1).
	AssumedWorkers int
	// Now is the caller's clock (default time.Now). Decisions use Redis
	// TIME, so that workers with skewed clocks agree; the times returned
	// (Reserve's at, Status's LastThrottled) are translated into this
	// clock as "now + the delay Redis computed".
	Now func() time.Time
	// Logger receives switches to and from the fallback and rate cuts
	// (default: discard).
	Logger *slog.Logger
}

// RedisStats counts what a Redis limiter did, for telemetry.
type RedisStats struct {
	// Fallback is true while decisions go to the fallback.
	Fallback bool
	// LiveWorkers is the live worker count last read from Redis (or
	// AssumedWorkers): the divisor of the fallback limits.
	LiveWorkers int
	// FallbackSwitches counts switches to the fallback, Recoveries the
	// switches back to Redis.
	FallbackSwitches, Recoveries uint64
	// FallbackDecisions counts Reserve, Acquire and Throttled calls
	// answered by the fallback.
	FallbackDecisions uint64
	// Throttles counts throttling replies reported to Redis; Cuts those
	// that cut a rate (the others fell within the debounce period).
	Throttles, Cuts uint64
}

// Redis is a Limiter shared by every worker through Redis: each decision
// is one Lua script run (one round trip) over the keys of one destination.
// While Redis is unreachable it decides through the configured fallback
// with limits divided among the live workers, and it returns to Redis by
// itself once Redis answers again. It needs Redis 5 or later (scripts
// replicated by effects, so that they may read TIME before writing), a
// single server, Sentinel or Cluster.
type Redis struct {
	client   redis.UniversalClient
	adaptive Adaptive
	prefix   string
	fallback Limiter
	id       string
	beatTTL  time.Duration
	beatEach time.Duration
	timeout  time.Duration
	retry    time.Duration
	grace    time.Duration
	now      func() time.Time
	log      *slog.Logger

	down     atomic.Bool
	live     atomic.Int64
	seq      atomic.Uint64
	switches atomic.Uint64
	recovers atomic.Uint64
	fbCalls  atomic.Uint64
	throttle atomic.Uint64
	cuts     atomic.Uint64

	regMu sync.Mutex
	reg   map[string]redisRegistration

	kick      chan struct{}
	stop      context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// redisRegistration remembers when this worker last wrote a destination's meta
// hash, and with which limits.
type redisRegistration struct {
	lim Limits
	at  time.Time
}

var _ Limiter = (*Redis)(nil)

// NewRedis returns a limiter over client, which the caller keeps owning
// (Close does not close it). It registers this worker in the liveness set
// at once, waiting at most Timeout: if Redis is unreachable it starts on
// the fallback, with AssumedWorkers as the live count, and keeps trying;
// if Redis answers with an error (a wrong password, say) NewRedis returns
// it. Close stops the background heartbeat.
func NewRedis(client redis.UniversalClient, cfg RedisConfig) (*Redis, error) {
	a := redisAdaptiveDefaults(cfg.Adaptive)
	var errs []error
	if client == nil {
		errs = append(errs, errors.New("shaping: redis: no client"))
	}
	if cfg.Fallback == nil {
		errs = append(errs, errors.New("shaping: redis: no fallback limiter (a Redis outage must not mean no limit)"))
	}
	if strings.ContainsAny(cfg.Prefix, "{}") {
		errs = append(errs, fmt.Errorf("shaping: redis: prefix %q contains { or }, which would change the hash tags", cfg.Prefix))
	}
	if a.Cut <= 0 || a.Cut > 1 {
		errs = append(errs, fmt.Errorf("shaping: redis: adaptive cut %v is not in (0, 1]", a.Cut))
	}
	if a.Floor <= 0 || a.Floor > 1 {
		errs = append(errs, fmt.Errorf("shaping: redis: adaptive floor %v is not in (0, 1]", a.Floor))
	}
	if a.Step < 0 || a.Debounce < 0 || a.Hold < 0 || a.StepEvery < 0 {
		errs = append(errs, errors.New("shaping: redis: adaptive step and durations must not be negative"))
	}
	if cfg.Heartbeat < 0 || cfg.Timeout < 0 || cfg.Retry < 0 || cfg.ReservationGrace < 0 || cfg.AssumedWorkers < 0 {
		errs = append(errs, errors.New("shaping: redis: durations and AssumedWorkers must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	r := &Redis{
		client:   client,
		adaptive: a,
		prefix:   cmp.Or(cfg.Prefix, "postflow:shaping"),
		fallback: cfg.Fallback,
		id:       cfg.WorkerID,
		beatEach: cmp.Or(cfg.Heartbeat, 5*time.Second),
		timeout:  cmp.Or(cfg.Timeout, 500*time.Millisecond),
		retry:    cmp.Or(cfg.Retry, time.Second),
		grace:    cmp.Or(cfg.ReservationGrace, reservationTTL),
		now:      cfg.Now,
		log:      cfg.Logger,
		reg:      map[string]redisRegistration{},
		kick:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	r.beatTTL = 3 * r.beatEach
	if r.id == "" {
		var b [6]byte
		_, _ = rand.Read(b[:]) // never fails (crypto/rand)
		r.id = "w-" + hex.EncodeToString(b[:])
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.live.Store(int64(max(cfg.AssumedWorkers, 1)))

	ctx, cancel := context.WithCancel(context.Background())
	if err := r.beat(ctx); err != nil && !redisUnavailable(err) {
		cancel()
		return nil, fmt.Errorf("shaping: redis: first heartbeat: %w", err)
	}
	r.stop = cancel
	go r.loop(ctx)
	return r, nil
}

func redisAdaptiveDefaults(a Adaptive) Adaptive {
	d := DefaultAdaptive()
	a.Cut = cmp.Or(a.Cut, d.Cut)
	a.Floor = cmp.Or(a.Floor, d.Floor)
	a.Debounce = cmp.Or(a.Debounce, d.Debounce)
	a.Hold = cmp.Or(a.Hold, d.Hold)
	a.Step = cmp.Or(a.Step, d.Step)
	a.StepEvery = cmp.Or(a.StepEvery, d.StepEvery)
	return a
}

// Close stops the heartbeat and removes this worker from the liveness set,
// so that the others count one worker fewer at their next heartbeat. It
// does not close the Redis client. Calling it again returns the first
// call's result; no other method may be called after it.
func (r *Redis) Close() error {
	r.closeOnce.Do(func() {
		r.stop()
		<-r.done
		if r.down.Load() {
			return // the liveness entry expires on its own
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
		defer cancel()
		err := heartbeatScript.Run(ctx, r.client, []string{r.workersKey()}, r.id, r.beatTTL.Milliseconds(), "leave").Err()
		if err != nil {
			r.closeErr = fmt.Errorf("shaping: redis: leaving the liveness set: %w", err)
		}
	})
	return r.closeErr
}

// Stats returns the limiter's counters.
func (r *Redis) Stats() RedisStats {
	return RedisStats{
		Fallback:          r.down.Load(),
		LiveWorkers:       int(r.live.Load()),
		FallbackSwitches:  r.switches.Load(),
		Recoveries:        r.recovers.Load(),
		FallbackDecisions: r.fbCalls.Load(),
		Throttles:         r.throttle.Load(),
		Cuts:              r.cuts.Load(),
	}
}

// Reserve implements Limiter with GCRA in Redis (reserve.lua), at the
// destination's Rate slowed by its adaptive factor. As in Memory, a job
// with a reservation is granted from min(50ms, one interval) before its
// slot on, and a reservation not claimed within ReservationGrace of its
// slot is forgotten. An empty job takes no reservation: when not ok, at is
// only the earliest time worth asking again. at is in the clock of
// RedisConfig.Now.
func (r *Redis) Reserve(ctx context.Context, dest Destination, job string) (ok bool, at time.Time, err error) {
	lim := dest.Limits
	if lim.Rate.Unlimited() {
		return true, r.now(), nil
	}
	if err := redisCheckName(dest); err != nil {
		return false, time.Time{}, err
	}
	if r.down.Load() {
		return r.fallbackReserve(ctx, dest, job)
	}
	base := r.base(dest.Name)
	hasJob := "0"
	if job != "" {
		hasJob = "1"
	}
	a := r.adaptive
	args := []any{int64(lim.Rate.Interval()), max(lim.Burst, 1), hasJob, r.grace.Microseconds(),
		a.Floor, a.Hold.Microseconds(), a.Step, a.StepEvery.Microseconds(), reserveEarly.Microseconds(), reserveLate.Microseconds()}
	args = append(args, r.registration(dest)...)
	res, err := r.run(ctx, reserveScript, []string{base + ":tat", base + ":adapt", base + ":meta", base + ":r:" + job}, args...)
	if errors.Is(err, ErrUnavailable) {
		return r.fallbackReserve(ctx, dest, job)
	}
	if err != nil {
		return false, time.Time{}, fmt.Errorf("shaping: %s: reserve: %w", dest.Name, err)
	}
	v, err := redisInt64s(res, 3)
	if err != nil {
		return false, time.Time{}, fmt.Errorf("shaping: %s: reserve: %w", dest.Name, err)
	}
	// Read the local clock after the reply: at then lies no earlier than
	// the slot in Redis's clock, so a job back at at finds its slot due.
	now := r.now()
	if v[0] == 1 {
		return true, now, nil
	}
	return false, now.Add(time.Duration(v[1]-v[2]) * time.Microsecond), nil
}

func (r *Redis) fallbackReserve(ctx context.Context, dest Destination, job string) (bool, time.Time, error) {
	r.fbCalls.Add(1)
	return r.fallback.Reserve(ctx, r.fallbackDest(dest), job)
}

// Acquire implements Limiter with a sorted set of leases (acquire.lua):
// expired leases are dropped, then a lease is added if fewer than
// Connections remain. ttl is rounded up to a millisecond. While Redis is
// unreachable the lease comes from the fallback, and is renewed and
// released there.
func (r *Redis) Acquire(ctx context.Context, dest Destination, ttl time.Duration) (Lease, bool, error) {
	lim := dest.Limits
	if lim.Connections <= 0 {
		return redisFreeLease{}, true, nil
	}
	if err := redisCheckName(dest); err != nil {
		return nil, false, err
	}
	if ttl <= 0 {
		return nil, false, fmt.Errorf("shaping: %s: acquire: ttl %v is not positive", dest.Name, ttl)
	}
	if r.down.Load() {
		return r.fallbackAcquire(ctx, dest, ttl)
	}
	base := r.base(dest.Name)
	id := r.id + ":" + strconv.FormatUint(r.seq.Add(1), 36)
	args := append([]any{"acquire", id, redisMillis(ttl), lim.Connections}, r.registration(dest)...)
	res, err := r.run(ctx, acquireScript, []string{base + ":conn", base + ":meta"}, args...)
	if errors.Is(err, ErrUnavailable) {
		return r.fallbackAcquire(ctx, dest, ttl)
	}
	if err != nil {
		return nil, false, fmt.Errorf("shaping: %s: acquire: %w", dest.Name, err)
	}
	if n, _ := res.(int64); n != 1 {
		return nil, false, nil
	}
	return &redisLease{r: r, dest: dest.Name, key: base + ":conn", meta: base + ":meta", id: id}, true, nil
}

func (r *Redis) fallbackAcquire(ctx context.Context, dest Destination, ttl time.Duration) (Lease, bool, error) {
	r.fbCalls.Add(1)
	return r.fallback.Acquire(ctx, r.fallbackDest(dest), ttl)
}

// Throttled implements Limiter (throttle.lua): unless the last cut is
// more recent than Adaptive.Debounce, the factor in force is multiplied by
// Adaptive.Cut (not below Floor) and recorded with the time, by Redis
// TIME, for every worker. Each cut is logged and counted. While Redis is
// unreachable the fallback records it.
func (r *Redis) Throttled(ctx context.Context, dest Destination, reason string) error {
	if err := redisCheckName(dest); err != nil {
		return err
	}
	if r.down.Load() {
		r.fbCalls.Add(1)
		return r.fallback.Throttled(ctx, r.fallbackDest(dest), reason)
	}
	if len(reason) > maxReason {
		reason = strings.ToValidUTF8(reason[:maxReason], "")
	}
	a := r.adaptive
	res, err := r.run(ctx, throttleScript, []string{r.base(dest.Name) + ":adapt"},
		a.Cut, a.Floor, a.Debounce.Microseconds(), a.Hold.Microseconds(), a.Step, a.StepEvery.Microseconds(), reason)
	if errors.Is(err, ErrUnavailable) {
		r.fbCalls.Add(1)
		return r.fallback.Throttled(ctx, r.fallbackDest(dest), reason)
	}
	if err != nil {
		return fmt.Errorf("shaping: %s: throttled: %w", dest.Name, err)
	}
	r.throttle.Add(1)
	vals, ok := res.([]any)
	if !ok || len(vals) != 4 {
		return fmt.Errorf("shaping: %s: throttled: unexpected reply %v", dest.Name, res)
	}
	if cut, _ := vals[0].(int64); cut == 1 {
		r.cuts.Add(1)
		telemetry.RateCut(ctx)
		to, _ := strconv.ParseFloat(fmt.Sprint(vals[1]), 64)
		from, _ := strconv.ParseFloat(fmt.Sprint(vals[3]), 64)
		r.log.InfoContext(ctx, "shaping: rate cut", slog.String("destination", dest.Name),
			slog.Float64("factor_from", from), slog.Float64("factor_to", to),
			slog.String("rate", describeRate(slowedRate(dest.Limits.Rate, to))),
			slog.String("reason", reason))
	}
	return nil
}

// Status implements Limiter: every destination some worker used within
// the last day, found by SCAN over the meta keys (on every master of a
// cluster). Its times are in the clock of RedisConfig.Now. LastThrottled
// is zero again once the destination has fully recovered. While Redis is
// unreachable it returns the fallback's status, with the divided limits.
func (r *Redis) Status(ctx context.Context) ([]DestinationStatus, error) {
	if r.down.Load() {
		return r.fallback.Status(ctx)
	}
	var (
		mu  sync.Mutex
		out []DestinationStatus
	)
	err := r.forEachNode(ctx, func(ctx context.Context, c redis.UniversalClient) error {
		got, err := r.statusOf(ctx, c)
		mu.Lock()
		out = append(out, got...)
		mu.Unlock()
		return err
	})
	if err != nil {
		if redisUnavailable(err) && ctx.Err() == nil {
			r.markDown(err)
			return r.fallback.Status(ctx)
		}
		return nil, fmt.Errorf("shaping: status: %w", err)
	}
	slices.SortFunc(out, func(a, b DestinationStatus) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// forEachNode runs fn on each node holding part of the keyspace.
func (r *Redis) forEachNode(ctx context.Context, fn func(context.Context, redis.UniversalClient) error) error {
	switch c := r.client.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return fn(ctx, n) })
	case *redis.Ring:
		return c.ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error { return fn(ctx, n) })
	default:
		return fn(ctx, r.client)
	}
}

// statusOf scans one node: one SCAN and one pipeline of status scripts
// per page.
func (r *Redis) statusOf(ctx context.Context, c redis.UniversalClient) ([]DestinationStatus, error) {
	var out []DestinationStatus
	match := redisGlobEscape(r.prefix) + ":{*}:meta"
	var cursor uint64
	for {
		sctx, cancel := context.WithTimeout(ctx, r.timeout)
		keys, next, err := c.Scan(sctx, cursor, match, scanCount).Result()
		cancel()
		if err != nil {
			return out, err
		}
		if len(keys) > 0 {
			got, err := r.statusPage(ctx, c, keys)
			out = append(out, got...)
			if err != nil {
				return out, err
			}
		}
		if next == 0 {
			return out, nil
		}
		cursor = next
	}
}

func (r *Redis) statusPage(ctx context.Context, c redis.UniversalClient, keys []string) ([]DestinationStatus, error) {
	pctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	// EVAL, not EVALSHA: a pipeline cannot fall back on NOSCRIPT, and a
	// status listing is rare enough to send the script's text.
	pipe := c.Pipeline()
	cmds := make([]*redis.Cmd, len(keys))
	for i, k := range keys {
		base := strings.TrimSuffix(k, ":meta")
		cmds[i] = statusScript.Eval(pctx, pipe, []string{k, base + ":adapt", base + ":conn"})
	}
	if _, err := pipe.Exec(pctx); err != nil {
		return nil, err
	}
	now := r.now()
	var out []DestinationStatus
	for i, cmd := range cmds {
		vals, ok := cmd.Val().([]any)
		if !ok || len(vals) != 10 {
			continue // not a meta hash: a job key that matched the pattern
		}
		s := make([]string, len(vals))
		for j, v := range vals {
			s[j] = fmt.Sprint(v)
		}
		if s[0] == "" || r.base(s[0])+":meta" != keys[i] {
			continue
		}
		out = append(out, r.destinationStatus(s, now))
	}
	return out, nil
}

// destinationStatus builds one status from status.lua's reply.
func (r *Redis) destinationStatus(s []string, now time.Time) DestinationStatus {
	atoi := func(v string) int64 { n, _ := strconv.ParseInt(v, 10, 64); return n }
	st := DestinationStatus{
		Name:       s[0],
		Configured: Rate{N: int(atoi(s[1])), Per: time.Duration(atoi(s[2]))},
		Factor:     1,
	}
	st.ConnectionsInUse = int(atoi(s[8]))
	serverNow := atoi(s[9])
	if f, err := strconv.ParseFloat(s[5], 64); err == nil && s[6] != "" {
		cutAt := atoi(s[6])
		st.Factor = r.adaptive.Factor(f, time.UnixMicro(cutAt), time.UnixMicro(serverNow))
		st.LastThrottled = now.Add(-time.Duration(serverNow-cutAt) * time.Microsecond)
	}
	st.Current = slowedRate(st.Configured, st.Factor)
	return st
}

// FallbackLimits is what one of workers live workers applies alone while
// Redis is unreachable, so that together they stay within lim:
//   - the rate is lim's divided exactly, as N per workers×Per (no
//     rounding, never zero, never unlimited), with a burst of
//     Burst/workers rounded down, at least 1;
//   - connections are Connections/workers rounded down, at least 1 (so
//     with more workers than connections each still has one);
//   - unlimited stays unlimited, and the per-connection and
//     per-transaction caps are unchanged.
//
// workers below 1 counts as 1.
func FallbackLimits(lim Limits, workers int) Limits {
	n := max(workers, 1)
	out := lim
	if !lim.Rate.Unlimited() {
		per := lim.Rate.Per
		if per > math.MaxInt64/time.Duration(n) {
			per = math.MaxInt64
		} else {
			per *= time.Duration(n)
		}
		out.Rate = Rate{N: lim.Rate.N, Per: per}
		out.Burst = max(1, max(lim.Burst, 1)/n)
	}
	if lim.Connections > 0 {
		out.Connections = max(1, lim.Connections/n)
	}
	return out
}

func (r *Redis) fallbackDest(dest Destination) Destination {
	return Destination{Name: dest.Name, Limits: FallbackLimits(dest.Limits, int(r.live.Load()))}
}

// run runs one script with the decision timeout. An error that means
// Redis cannot serve (network, timeout, a replica, loading, ...) switches
// to the fallback and comes back wrapping ErrUnavailable; a script's own
// error, or the caller's context ending, comes back as it is.
func (r *Redis) run(ctx context.Context, s *redis.Script, keys []string, args ...any) (any, error) {
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	v, err := s.Run(cctx, r.client, keys, args...).Result()
	if err == nil {
		return v, nil
	}
	if ctx.Err() == nil && redisUnavailable(err) {
		r.markDown(err)
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil, err
}

// unavailable reports whether err means Redis cannot serve now, as opposed
// to a reply to a bad request: anything but a Redis error reply (network
// errors, timeouts, a closed client), or a reply saying the server cannot
// serve (READONLY after a failover, LOADING, MASTERDOWN, CLUSTERDOWN,
// TRYAGAIN, max clients, OOM, BUSY with a script).
func redisUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var re redis.Error
	if !errors.As(err, &re) {
		return true
	}
	return redis.IsReadOnlyError(err) || redis.IsLoadingError(err) || redis.IsMasterDownError(err) ||
		redis.IsClusterDownError(err) || redis.IsTryAgainError(err) || redis.IsMaxClientsError(err) ||
		redis.IsOOMError(err) || redis.HasErrorPrefix(err, "BUSY")
}

// markDown switches decisions to the fallback, logging and counting the
// switch once, and has the heartbeat loop try Redis every Retry.
func (r *Redis) markDown(cause error) {
	if !r.down.CompareAndSwap(false, true) {
		return
	}
	r.switches.Add(1)
	telemetry.ShapingFallback(context.Background())
	r.log.Warn("shaping: redis unreachable, limiting locally at a share of each destination's limits",
		slog.Any("error", cause), slog.Int64("live_workers", r.live.Load()), slog.Duration("retry", r.retry))
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// markUp switches decisions back to Redis, logging and counting it once.
func (r *Redis) markUp() {
	if !r.down.CompareAndSwap(true, false) {
		return
	}
	r.recovers.Add(1)
	// Redis may have restarted empty: write the meta hashes again.
	r.regMu.Lock()
	clear(r.reg)
	r.regMu.Unlock()
	r.log.Info("shaping: redis reachable again, limits shared again", slog.Int64("live_workers", r.live.Load()))
}

// loop renews this worker's liveness every Heartbeat, or tries Redis
// every Retry while it is unreachable, until ctx ends.
func (r *Redis) loop(ctx context.Context) {
	defer close(r.done)
	for {
		d := r.beatEach
		if r.down.Load() {
			d = r.retry
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-r.kick:
			t.Stop()
			continue // just went down: wait Retry, not Heartbeat
		case <-t.C:
		}
		_ = r.beat(ctx) // logged, and an outage switches to the fallback
		r.pruneRegistrations()
	}
}

// beat renews this worker's liveness and reads the live count; success
// means Redis is reachable.
func (r *Redis) beat(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	n, err := heartbeatScript.Run(cctx, r.client, []string{r.workersKey()}, r.id, r.beatTTL.Milliseconds(), "").Int64()
	cancel()
	if err != nil {
		switch {
		case ctx.Err() != nil:
		case redisUnavailable(err):
			r.markDown(err)
		default:
			r.log.Warn("shaping: redis heartbeat", slog.Any("error", err))
		}
		return err
	}
	r.live.Store(max(n, 1))
	r.markUp()
	return nil
}

// registration returns the trailing script arguments that (re)write
// dest's meta hash when this worker has not written it for registerEvery
// or its limits changed, and "0" (leave it) otherwise.
func (r *Redis) registration(dest Destination) []any {
	now := time.Now()
	r.regMu.Lock()
	reg, ok := r.reg[dest.Name]
	need := !ok || reg.lim != dest.Limits || now.Sub(reg.at) >= registerEvery
	if need {
		r.reg[dest.Name] = redisRegistration{lim: dest.Limits, at: now}
	}
	r.regMu.Unlock()
	if !need {
		return []any{"0"}
	}
	l := dest.Limits
	return []any{"1", dest.Name, l.Rate.N, int64(l.Rate.Per), l.Burst, l.Connections, metaTTL.Milliseconds()}
}

// pruneRegistrations forgets destinations not used for registerEvery, so
// the map stays as small as the set of destinations in use.
func (r *Redis) pruneRegistrations() {
	now := time.Now()
	r.regMu.Lock()
	defer r.regMu.Unlock()
	for name, reg := range r.reg {
		if now.Sub(reg.at) >= registerEvery {
			delete(r.reg, name)
		}
	}
}

func (r *Redis) base(name string) string { return r.prefix + ":{" + name + "}" }

func (r *Redis) workersKey() string { return r.prefix + ":workers" }

// redisCheckName refuses an empty destination name: its keys would carry the
// empty hash tag {}, which Redis Cluster ignores, spreading one
// destination over several slots.
func redisCheckName(dest Destination) error {
	if dest.Name == "" {
		return errors.New("shaping: destination has no name")
	}
	return nil
}

// millis rounds d up to whole milliseconds.
func redisMillis(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// int64s reads a script's reply of n integers.
func redisInt64s(res any, n int) ([]int64, error) {
	vals, ok := res.([]any)
	if !ok || len(vals) != n {
		return nil, fmt.Errorf("unexpected reply %v", res)
	}
	out := make([]int64, n)
	for i, v := range vals {
		if out[i], ok = v.(int64); !ok {
			return nil, fmt.Errorf("unexpected reply %v", res)
		}
	}
	return out, nil
}

// redisGlobEscape escapes the SCAN MATCH metacharacters in s.
func redisGlobEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		if strings.ContainsRune(`*?[]\`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// redisLease is a connection slot held in Redis.
type redisLease struct {
	r         *Redis
	dest      string
	key, meta string
	id        string

	mu       sync.Mutex // serialises Release
	released bool
}

// Renew implements Lease. It returns ErrLeaseLost when the lease is gone,
// and an error wrapping ErrUnavailable when Redis is unreachable.
func (l *redisLease) Renew(ctx context.Context, ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("shaping: %s: renew: ttl %v is not positive", l.dest, ttl)
	}
	l.mu.Lock()
	released := l.released
	l.mu.Unlock()
	if released {
		return fmt.Errorf("shaping: %s: renew: %w", l.dest, ErrLeaseLost)
	}
	if l.r.down.Load() {
		return fmt.Errorf("shaping: %s: renew: %w", l.dest, ErrUnavailable)
	}
	res, err := l.r.run(ctx, acquireScript, []string{l.key, l.meta}, "renew", l.id, redisMillis(ttl), 0, "0")
	if err != nil {
		return fmt.Errorf("shaping: %s: renew: %w", l.dest, err)
	}
	if n, _ := res.(int64); n != 1 {
		return fmt.Errorf("shaping: %s: renew: %w", l.dest, ErrLeaseLost)
	}
	return nil
}

// Release implements Lease. Once it has succeeded, further calls do
// nothing; while Redis is unreachable it returns an error wrapping
// ErrUnavailable, and the lease expires at its last ttl.
func (l *redisLease) Release(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return nil
	}
	if l.r.down.Load() {
		return fmt.Errorf("shaping: %s: release: %w", l.dest, ErrUnavailable)
	}
	if _, err := l.r.run(ctx, acquireScript, []string{l.key, l.meta}, "release", l.id); err != nil {
		return fmt.Errorf("shaping: %s: release: %w", l.dest, err)
	}
	l.released = true
	return nil
}

// redisFreeLease is the lease of a destination without a connection limit.
type redisFreeLease struct{}

func (redisFreeLease) Renew(context.Context, time.Duration) error { return nil }
func (redisFreeLease) Release(context.Context) error              { return nil }
