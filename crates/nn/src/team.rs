//! Threads that share the weight stream of per-step products.
//!
//! A training batch cut into parts, one per core, runs each part's decoder steps on
//! its own core. Every step multiplies the speller's cell weights (19 MB at the
//! reference size, far beyond L2) by the part's few rows, so each core streams the
//! same weights from L3 for its own rows, and the step waits on L3 bandwidth
//! (BENCHMARKS.md, "Training step"). In a [`Team`] the parts meet at each such product:
//! each member computes its share of the output columns (whole panels of the
//! [`PackedMatrix`]) for every member's rows, so each core streams only its share of
//! the weights. Every output is still computed whole by one thread with the kernel of
//! [`PackedMatrix::gemm_acc`], so the results are the same bits as each part alone.
//!
//! Members meet at two barriers per product: one before it (every member's rows are
//! posted) and one after (every share is written). A member that has no more products
//! (its part has fewer decoder steps, or it failed) leaves, and the others then share
//! the columns without it; a member that is dropped leaves too, so an error or a panic
//! in one part outside a product never leaves the others waiting. Inside a product
//! nothing can fail once rows are shared: members that disagree about the product
//! (another matrix, another count) find out before anyone writes, pass the closing
//! barrier together and then panic.
//!
//! The members must run at the same time on different threads (they wait for each
//! other by spinning): [`Team::run`] starts them on scoped threads.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::packed::{PackedMatrix, Rows};

/// One product of a member's round: `y += W x`.
#[derive(Debug, Clone, Copy)]
struct Job {
    w: *const PackedMatrix,
    rows: Rows,
}

impl Job {
    /// A place holder in a slot's fixed array, never read.
    const NONE: Job = Job {
        w: std::ptr::null(),
        rows: Rows::NONE,
    };
}

/// What a member posts for the round under way: its first `len` jobs (fixed arrays,
/// so that rounds allocate nothing).
#[derive(Debug)]
struct Slot {
    jobs: [Job; MAX_JOBS],
    len: usize,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot {
            jobs: [Job::NONE; MAX_JOBS],
            len: 0,
        }
    }
}

/// Products per round: an LSTM cell's two (input and recurrent weights).
const MAX_JOBS: usize = 2;

/// Spins before a waiting member starts yielding its core (when more threads than
/// cores run, the member it waits for may need that core).
const SPINS: u32 = 1 << 14;

#[derive(Debug)]
struct State {
    /// Members waiting at the current barrier.
    arrived: usize,
    /// Members still taking part, as a bit set.
    active: usize,
}

/// A group of threads that share the weight stream of their products.
#[derive(Debug)]
pub struct Team {
    members: usize,
    state: Mutex<State>,
    /// Bumped when a barrier opens; waiting members spin on it.
    generation: AtomicUsize,
    /// The members taking part when the last barrier opened.
    round: AtomicUsize,
    slots: Vec<SlotCell>,
}

#[derive(Debug, Default)]
struct SlotCell(UnsafeCell<Slot>);

// SAFETY: a slot is written only by its member between two rounds and read by the
// others only between a round's two barriers, which order the accesses (the barrier's
// mutex and the generation's release/acquire).
unsafe impl Sync for SlotCell {}

/// One thread's place in a [`Team`]. Dropping it leaves the team.
#[derive(Debug)]
pub struct TeamMember<'t> {
    team: &'t Team,
    index: usize,
    left: Cell<bool>,
}

impl Team {
    /// Largest team: members are bits of a `usize`.
    pub const MAX_MEMBERS: usize = usize::BITS as usize;

    fn new(members: usize) -> Team {
        assert!(
            (1..=Self::MAX_MEMBERS).contains(&members),
            "a team has 1 to {} members, not {members}",
            Self::MAX_MEMBERS
        );
        Team {
            members,
            state: Mutex::new(State {
                arrived: 0,
                active: all(members),
            }),
            generation: AtomicUsize::new(0),
            round: AtomicUsize::new(all(members)),
            slots: (0..members).map(|_| SlotCell::default()).collect(),
        }
    }

    /// Runs `f(member, item)` for every item of `items`, each on its own thread (the
    /// first on the calling thread) as one team, and returns the results in order.
    /// Products inside `f` are shared through the member ([`TeamMember::gemm_acc`]);
    /// everything else runs on the member's own thread.
    ///
    /// # Panics
    /// When `items` has more than [`Team::MAX_MEMBERS`] items, or when `f` panics.
    pub fn run<T: Send, R: Send>(items: Vec<T>, f: impl Fn(&TeamMember, T) -> R + Sync) -> Vec<R> {
        if items.is_empty() {
            return Vec::new();
        }
        let team = Team::new(items.len());
        let f = &f;
        // Every member exists before any thread starts: if a spawn fails, the members
        // not yet running are dropped with their closures, and so leave the team.
        let mut members = (0..items.len())
            .map(|i| team.member(i))
            .collect::<Vec<_>>()
            .into_iter();
        let mut items = items.into_iter();
        let (first, first_member) = (
            items.next().expect("not empty"),
            members.next().expect("one per item"),
        );
        std::thread::scope(|scope| {
            let others: Vec<_> = items
                .zip(members)
                .map(|(item, member)| scope.spawn(move || f(&member, item)))
                .collect();
            let first = f(&first_member, first);
            drop(first_member);
            let mut out = vec![first];
            for h in others {
                match h.join() {
                    Ok(r) => out.push(r),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            out
        })
    }

    /// Whether members share anything: the shared products need the f32 packs that
    /// [`LstmCell::prepare`](crate::LstmCell::prepare) makes for training only on
    /// AVX-512 CPUs. Elsewhere a team's members would just run side by side.
    pub fn shares_products() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            crate::simd::avx512()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    fn member(&self, index: usize) -> TeamMember<'_> {
        TeamMember {
            team: self,
            index,
            left: Cell::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic never happens while the lock is held; take the state regardless.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the barrier (the lock held): everyone waiting goes on.
    fn open(&self, state: &mut State) {
        state.arrived = 0;
        self.round.store(state.active, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Waits until every member still taking part has arrived; returns them (a bit
    /// set), as they stand for the round this barrier opens.
    fn arrive(&self) -> usize {
        let mut state = self.lock();
        let generation = self.generation.load(Ordering::Relaxed);
        state.arrived += 1;
        if state.arrived == state.active.count_ones() as usize {
            self.open(&mut state);
            return state.active;
        }
        drop(state);
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        self.round.load(Ordering::Relaxed)
    }

    fn leave(&self, index: usize) {
        let mut state = self.lock();
        state.active &= !(1 << index);
        if state.arrived > 0 && state.arrived == state.active.count_ones() as usize {
            self.open(&mut state);
        }
    }
}

/// A bit set of the first `n` members.
fn all(n: usize) -> usize {
    if n == usize::BITS as usize {
        usize::MAX
    } else {
        (1 << n) - 1
    }
}

impl TeamMember<'_> {
    /// Leaves the team: the others stop waiting for this member, and its later
    /// products (if any) run alone. A member whose part has no more products should
    /// leave at once rather than when it is dropped.
    pub fn leave(&self) {
        if !self.left.replace(true) {
            self.team.leave(self.index);
        }
    }

    /// `y += W_1 x_1 + W_2 x_2 + ..` (in that order) for `terms` `(W_i [N, K_i],
    /// x_i [M, K_i])`, `y` `[M, N]`, sharing the weights' stream with the team: the
    /// same bits as [`PackedMatrix::gemm_acc`] term by term.
    ///
    /// Every member still in the team must make the same sequence of calls, with the
    /// same matrices (the same objects, stored in f32; its own rows: any number, 0
    /// included). That is checked: all members panic on a mismatch.
    ///
    /// # Panics
    /// When a matrix is not stored in f32, shapes disagree, or `terms` has more than
    /// two terms (bugs in lasr: layers check user-facing shapes first).
    pub fn gemm_acc(&self, mut y: ArrayViewMut2<f32>, terms: &[(&PackedMatrix, ArrayView2<f32>)]) {
        assert!(
            terms.len() <= MAX_JOBS,
            "at most {MAX_JOBS} products per round"
        );
        for (w, x) in terms {
            check(w, x.dim(), y.dim());
        }
        let rows = y.nrows();
        let y = y.as_slice_mut().expect("products write row-major outputs");
        // Every term adds into `y`, so the jobs share its pointer.
        let yp = y.as_mut_ptr();
        let xs: [_; MAX_JOBS] =
            std::array::from_fn(|i| terms.get(i).map(|(_, x)| x.as_standard_layout()));
        let jobs: [Job; MAX_JOBS] = std::array::from_fn(|i| match (terms.get(i), &xs[i]) {
            (Some((w, _)), Some(x)) => job(w, x.as_slice().expect("standard layout"), yp, rows),
            _ => Job::NONE,
        });
        self.round(&jobs[..terms.len()]);
    }

    /// `y_i += W_i x` for `outs` `(W_i [N_i, K], y_i [M, N_i])` and `x` `[M, K]`,
    /// sharing the weights' stream with the team; see [`TeamMember::gemm_acc`].
    pub fn gemm_acc_each(
        &self,
        outs: &mut [(&PackedMatrix, ArrayViewMut2<f32>)],
        x: ArrayView2<f32>,
    ) {
        assert!(
            outs.len() <= MAX_JOBS,
            "at most {MAX_JOBS} products per round"
        );
        for (w, y) in outs.iter() {
            check(w, x.dim(), y.dim());
        }
        let x = x.as_standard_layout();
        let x = x.as_slice().expect("standard layout");
        let mut jobs = [Job::NONE; MAX_JOBS];
        for (j, (w, y)) in jobs.iter_mut().zip(outs.iter_mut()) {
            let rows = y.nrows();
            let y = y.as_slice_mut().expect("row-major outputs");
            *j = job(w, x, y.as_mut_ptr(), rows);
        }
        self.round(&jobs[..outs.len()]);
    }

    /// Posts `jobs`, waits for the team, computes this member's share of every
    /// member's products, and waits until all shares are written.
    fn round(&self, jobs: &[Job]) {
        // Checked before posting: a panic after the opening barrier could free rows
        // the others are writing into.
        assert!(Team::shares_products(), "team products need AVX-512");
        if self.left.get() {
            for j in jobs {
                // SAFETY: the job was made from live views by the caller, just now.
                let w = unsafe { &*j.w };
                // SAFETY: this thread alone writes the job's outputs.
                unsafe { products(w, 0..w.panels(), &[j.rows]) };
            }
            return;
        }
        let team = self.team;
        // SAFETY: only this member writes its slot, and nobody reads it now: the
        // others read it only between the two barriers of a round, and this member
        // is not in one.
        unsafe {
            let slot = &mut *team.slots[self.index].0.get();
            slot.jobs[..jobs.len()].copy_from_slice(jobs);
            slot.len = jobs.len();
        }
        let round = team.arrive();
        let count = round.count_ones() as usize;
        let rank = (round & ((1 << self.index) - 1)).count_ones() as usize;
        // SAFETY: between the barriers every slot of the round is complete and
        // unchanging; a member that left is not in `round`.
        let slots = (0..team.members)
            .filter(|m| round & (1 << m) != 0)
            .map(|m| unsafe { &*team.slots[m].0.get() });
        // Checked before anyone writes: a member that panicked between the barriers
        // would free rows the others are writing into. Every member sees the same
        // slots, so all of them pass the closing barrier and then panic together.
        let agree = slots.clone().all(|slot| {
            slot.len == jobs.len()
                && slot.jobs.iter().zip(jobs).all(|(theirs, mine)| {
                    // SAFETY: posted by this member, whose caller keeps it alive.
                    let w = unsafe { &*mine.w };
                    std::ptr::eq(theirs.w, mine.w) && w.f32_data().is_some()
                })
        });
        if !agree {
            team.arrive();
            panic!("team members posted different products (counts, matrices or formats)");
        }
        let mut sets = [Rows::NONE; Team::MAX_MEMBERS];
        for (j, job) in jobs.iter().enumerate() {
            // SAFETY: the pointer was posted by this member; its matrix is the
            // caller's, alive for the call, and every member posted the same one
            // (checked above).
            let w = unsafe { &*job.w };
            let panels = w.panels();
            let mine = rank * panels / count..(rank + 1) * panels / count;
            for (set, slot) in sets.iter_mut().zip(slots.clone()) {
                *set = slot.jobs[j].rows;
            }
            // SAFETY: each set's rows were posted with their shapes checked against
            // this matrix; this member alone writes the outputs of panels `mine`
            // during the round (the others take theirs), and their owners wait at
            // the closing barrier.
            unsafe { products(w, mine, &sets[..count]) };
        }
        team.arrive();
    }
}

/// `y += W x` over the outputs of `panels` for each of `sets`, with the AVX-512
/// kernel of [`PackedMatrix::gemm_acc`].
///
/// # Safety
/// Each set's rows hold `K` and `N` floats (`W` `[N, K]`), and no other thread
/// touches these panels' outputs meanwhile.
///
/// # Panics
/// When `w` is not stored in f32 or the CPU lacks AVX-512 (teams run only where
/// [`LstmCell::prepare`](crate::LstmCell::prepare) made f32 packs for training).
unsafe fn products(w: &PackedMatrix, panels: std::ops::Range<usize>, sets: &[Rows]) {
    let data = w.f32_data().expect("team products are f32");
    let (n, k) = w.dim();
    if n == 0 || k == 0 {
        // Nothing to add, as in `PackedMatrix::gemm_acc` (and no empty panel to walk).
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        assert!(crate::simd::avx512(), "team products need AVX-512");
        // SAFETY: the CPU has AVX-512F; the caller vouches for the rows.
        unsafe { crate::packed::f32_rows_avx512(data, n, k, panels, sets) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (data, n, k, panels, sets);
        unreachable!("team products need AVX-512");
    }
}

/// Panics unless `W` `[N, K]` takes `x` `[M, K]` into `y` `[M, N]`: a member's rows
/// are shared with the others by raw pointers, so their shapes must be exact.
fn check(w: &PackedMatrix, x: (usize, usize), y: (usize, usize)) {
    let (n, k) = w.dim();
    assert!(
        x.1 == k && y.1 == n && x.0 == y.0,
        "team product: [{n}, {k}] x {x:?} into {y:?}"
    );
}

/// `y += W x`: the job for `rows` rows of `x` and `y` (row-major, shapes checked by
/// [`check`]).
fn job(w: &PackedMatrix, x: &[f32], y: *mut f32, rows: usize) -> Job {
    Job {
        w,
        rows: Rows {
            x: x.as_ptr(),
            y,
            rows,
        },
    }
}

impl Drop for TeamMember<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WeightFormat;
    use ndarray::Array2;
    use rand::SeedableRng;

    fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
        crate::init::uniform(
            (rows, cols),
            1.0,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        )
    }

    /// Three members with 4, 0 and 3 rows over three rounds, the second leaving after
    /// the first round: every output has the bits `PackedMatrix::gemm_acc` gives it
    /// alone, and nobody waits forever for the member that left.
    #[test]
    fn team_products_are_the_products_of_each_member_alone() {
        if !Team::shares_products() {
            return;
        }
        // 300 outputs: three panels, split unevenly over three or two members.
        let (w1, w2) = (random(300, 70, 1), random(300, 40, 2));
        let (p1, p2) = (
            PackedMatrix::new(w1.view(), WeightFormat::F32),
            PackedMatrix::new(w2.view(), WeightFormat::F32),
        );
        // The transposes, for products of one input into two outputs.
        let (t1, t2) = (
            PackedMatrix::new(w1.t(), WeightFormat::F32),
            PackedMatrix::new(w2.t(), WeightFormat::F32),
        );
        let rows = [4usize, 0, 3];
        let expected: Vec<_> = rows
            .iter()
            .enumerate()
            .map(|(m, &r)| {
                let mut out = Vec::new();
                for round in 0..3u64 {
                    let seed = 10 * m as u64 + round;
                    let (x1, x2) = (random(r, 70, seed), random(r, 40, seed + 100));
                    let mut y = random(r, 300, seed + 200);
                    p1.gemm_acc(y.view_mut(), x1.view());
                    p2.gemm_acc(y.view_mut(), x2.view());
                    let g = random(r, 300, seed + 300);
                    let (mut d1, mut d2) = (random(r, 70, seed + 400), random(r, 40, seed + 500));
                    t1.gemm_acc(d1.view_mut(), g.view());
                    t2.gemm_acc(d2.view_mut(), g.view());
                    out.push((y, d1, d2));
                }
                out
            })
            .collect();
        let got = Team::run(rows.iter().enumerate().collect(), |member, (m, &r)| {
            let mut out = Vec::new();
            for round in 0..3u64 {
                if m == 1 && round == 1 {
                    member.leave();
                }
                let seed = 10 * m as u64 + round;
                let (x1, x2) = (random(r, 70, seed), random(r, 40, seed + 100));
                let mut y = random(r, 300, seed + 200);
                member.gemm_acc(y.view_mut(), &[(&p1, x1.view()), (&p2, x2.view())]);
                let g = random(r, 300, seed + 300);
                let (mut d1, mut d2) = (random(r, 70, seed + 400), random(r, 40, seed + 500));
                member.gemm_acc_each(&mut [(&t1, d1.view_mut()), (&t2, d2.view_mut())], g.view());
                out.push((y, d1, d2));
            }
            out
        });
        assert_eq!(got, expected);
    }

    /// Members that post different products all panic, after the closing barrier
    /// and before anyone writes into another's rows; empty matrices add nothing.
    #[test]
    fn members_that_disagree_panic_together_and_empty_products_add_nothing() {
        if !Team::shares_products() {
            return;
        }
        let (a, b) = (
            PackedMatrix::new(random(256, 32, 4).view(), WeightFormat::F32),
            PackedMatrix::new(random(256, 16, 5).view(), WeightFormat::F32),
        );
        let panicked = AtomicUsize::new(0);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Team::run(vec![&a, &b], |member, w| {
                let x = random(2, w.dim().1, 6);
                let mut y = Array2::zeros((2, 256));
                let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    member.gemm_acc(y.view_mut(), &[(w, x.view())])
                }));
                if caught.is_err() {
                    panicked.fetch_add(1, Ordering::Relaxed);
                }
                assert!(y.iter().all(|&v| v == 0.0), "nothing written");
            })
        }));
        assert!(outcome.is_ok());
        assert_eq!(panicked.load(Ordering::Relaxed), 2, "both members refuse");
        let empty = PackedMatrix::new(Array2::<f32>::zeros((128, 0)).view(), WeightFormat::F32);
        let got = Team::run(vec![0, 1], |member, _| {
            let mut y = Array2::from_elem((3, 128), -0.0f32);
            member.gemm_acc(y.view_mut(), &[(&empty, Array2::zeros((3, 0)).view())]);
            y.iter().all(|v| v.to_bits() == (-0.0f32).to_bits())
        });
        assert_eq!(got, [true, true], "-0.0 stays -0.0: nothing was added");
    }

    /// A member that fails (here: panics) leaves, and the others finish alone.
    #[test]
    fn a_member_that_panics_does_not_hold_up_the_others() {
        if !Team::shares_products() {
            return;
        }
        let w = PackedMatrix::new(random(256, 32, 3).view(), WeightFormat::F32);
        let finished = AtomicUsize::new(0);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Team::run(vec![0, 1, 2], |member, m| {
                if m == 2 {
                    panic!("member 2 fails");
                }
                for round in 0..4 {
                    let x = random(2, 32, round);
                    let mut y = Array2::zeros((2, 256));
                    member.gemm_acc(y.view_mut(), &[(&w, x.view())]);
                    let mut alone = Array2::zeros((2, 256));
                    w.gemm_acc(alone.view_mut(), x.view());
                    assert_eq!(y, alone);
                }
                finished.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(outcome.is_err(), "the panic reaches the caller");
        assert_eq!(finished.load(Ordering::Relaxed), 2);
    }
}
