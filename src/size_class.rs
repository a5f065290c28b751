use std::fmt;

use crate::Error;

const MAX_CLASSES: usize = SizeClasses::MAX_CLASSES;
const MAX_CLASS_SIZE: usize = SizeClasses::MAX_CLASS_SIZE;

/// The capacities a pool hands out: every request is rounded up to the next
/// class.
///
/// Three shapes:
///
/// - [`geometric`](SizeClasses::geometric): `per_doubling` evenly spaced
///   classes between each power of two (the default is 4 KiB to 64 MiB with 4
///   per doubling, so rounding wastes at most 25%). Lookup is O(1): a
///   leading-zeros count and a shift.
/// - [`powers_of_two`](SizeClasses::powers_of_two): one class per doubling.
/// - [`from_sizes`](SizeClasses::from_sizes): an explicit list, such as the
///   `[100, 200, 300]` of the classic multi-level pool (binary search).
///
/// ```
/// use tierpool::SizeClasses;
///
/// let classes = SizeClasses::from_sizes(&[100, 200, 300])?;
/// assert_eq!(classes.class_for(150), Some(200));
/// assert_eq!(classes.class_for(301), None); // above the largest: not pooled
///
/// let geometric = SizeClasses::geometric(4096, 64 << 20, 4)?;
/// assert_eq!(geometric.class_for(4097), Some(5120));
/// assert_eq!(geometric.class_for(8192), Some(8192));
/// # Ok::<(), tierpool::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SizeClasses {
    /// `sizes[0]`, at hand for the fast path's first comparison.
    smallest: usize,
    shape: Shape,
    sizes: Box<[usize]>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    /// Classes `2^k + j * 2^(k - per_shift)` from `2^min_shift` up.
    Geometric { min_shift: u32, per_shift: u32 },
    /// Any sorted list; lookup by binary search.
    List,
}

// === impl SizeClasses ===

impl SizeClasses {
    /// The most classes one `SizeClasses` may have.
    ///
    /// Each class costs a shared-tier queue and a slot range in every thread
    /// cache, so an accidental million-entry list is refused rather than built.
    pub const MAX_CLASSES: usize = 1024;

    /// The largest class capacity: a quarter of the address space.
    ///
    /// Keeps every class, and twice it, representable and below `isize::MAX`.
    pub const MAX_CLASS_SIZE: usize = 1 << (usize::BITS - 3);

    /// Classes from `min` to `max` with `per_doubling` classes in each
    /// doubling: `min`, then `min * (1 + j / per_doubling)` for each `j`,
    /// and so on in each power of two.
    ///
    /// `min` and `per_doubling` must be powers of two with
    /// `per_doubling <= min`, and `min <= max`. The largest class is the
    /// smallest class at or above `max`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSizeClasses`] naming the argument at fault.
    pub fn geometric(min: usize, max: usize, per_doubling: usize) -> Result<Self, Error> {
        let invalid = |why: String| Err(Error::InvalidSizeClasses(why));
        if min == 0 || !min.is_power_of_two() {
            return invalid(format!("geometric: min must be a power of two, got {min}"));
        }
        if per_doubling == 0 || !per_doubling.is_power_of_two() {
            return invalid(format!(
                "geometric: per_doubling must be a power of two (1, 2, 4, ...), got {per_doubling}"
            ));
        }
        if per_doubling > min {
            return invalid(format!(
                "geometric: per_doubling ({per_doubling}) may not exceed min ({min}): \
                 classes would be less than one byte apart"
            ));
        }
        if max < min {
            return invalid(format!("geometric: max ({max}) is below min ({min})"));
        }
        if max > MAX_CLASS_SIZE {
            return invalid(format!(
                "geometric: max ({max}) is above the largest supported class ({MAX_CLASS_SIZE})"
            ));
        }
        let shape = Shape::Geometric {
            min_shift: min.trailing_zeros(),
            per_shift: per_doubling.trailing_zeros(),
        };
        let mut sizes = Vec::new();
        let mut index = 0;
        loop {
            let size = geometric_size(shape, index);
            sizes.push(size);
            if size >= max {
                break;
            }
            if sizes.len() == MAX_CLASSES {
                return invalid(format!(
                    "geometric: {min}..={max} with {per_doubling} per doubling needs more \
                     than {MAX_CLASSES} classes"
                ));
            }
            index += 1;
        }
        Ok(Self {
            smallest: sizes[0],
            shape,
            sizes: sizes.into_boxed_slice(),
        })
    }

    /// One class per power of two from `min` to `max` (both powers of two).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSizeClasses`] when either bound is not a power of two
    /// or `max < min`.
    pub fn powers_of_two(min: usize, max: usize) -> Result<Self, Error> {
        if !max.is_power_of_two() {
            return Err(Error::InvalidSizeClasses(format!(
                "powers_of_two: max must be a power of two, got {max}"
            )));
        }
        Self::geometric(min, max, 1).map_err(|e| match e {
            Error::InvalidSizeClasses(why) => {
                Error::InvalidSizeClasses(why.replacen("geometric", "powers_of_two", 1))
            }
            other => other,
        })
    }

    /// Exactly the given classes, which must be non-empty, non-zero, strictly
    /// increasing and at most [`SizeClasses::MAX_CLASSES`] long.
    ///
    /// ```
    /// use tierpool::SizeClasses;
    /// assert!(SizeClasses::from_sizes(&[]).is_err());
    /// assert!(SizeClasses::from_sizes(&[0, 100]).is_err());
    /// assert!(SizeClasses::from_sizes(&[300, 200]).is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSizeClasses`] naming the first offending entry.
    pub fn from_sizes(sizes: &[usize]) -> Result<Self, Error> {
        let invalid = |why: String| Err(Error::InvalidSizeClasses(why));
        if sizes.is_empty() {
            return invalid("from_sizes: the list is empty; give at least one class".into());
        }
        if sizes.len() > MAX_CLASSES {
            return invalid(format!(
                "from_sizes: {} classes given, at most {MAX_CLASSES} allowed",
                sizes.len()
            ));
        }
        for (i, &size) in sizes.iter().enumerate() {
            if size == 0 {
                return invalid(format!("from_sizes: class {i} is zero"));
            }
            if size > MAX_CLASS_SIZE {
                return invalid(format!(
                    "from_sizes: class {i} ({size}) is above the largest supported class \
                     ({MAX_CLASS_SIZE})"
                ));
            }
            if i > 0 && sizes[i - 1] >= size {
                return invalid(format!(
                    "from_sizes: classes must be strictly increasing, but class {} ({}) is \
                     followed by {size}",
                    i - 1,
                    sizes[i - 1]
                ));
            }
        }
        Ok(Self {
            smallest: sizes[0],
            shape: Shape::List,
            sizes: sizes.into(),
        })
    }

    /// The capacity a request for `size` bytes gets: the smallest class that
    /// holds it, or `None` above the largest class.
    #[inline]
    pub fn class_for(&self, size: usize) -> Option<usize> {
        self.index_for(size).map(|i| self.sizes[i])
    }

    /// The position of [`class_for`](Self::class_for)'s class in
    /// [`sizes`](Self::sizes).
    #[inline]
    pub fn index_for(&self, size: usize) -> Option<usize> {
        if size <= self.smallest {
            return Some(0);
        }
        self.index_above_smallest(size)
    }

    /// [`index_for`](Self::index_for) of a size above the smallest class.
    #[inline]
    fn index_above_smallest(&self, size: usize) -> Option<usize> {
        let index = match self.shape {
            Shape::Geometric {
                min_shift,
                per_shift,
            } => {
                if size > MAX_CLASS_SIZE {
                    return None;
                }
                // size lies in (2^k, 2^(k+1)] with k = floor(log2(size - 1)),
                // at least `min_shift` since size > 2^min_shift. The classes
                // there are 2^k + j * 2^(k - per_shift) for j in 1..=2^per_shift,
                // and size needs j = ceil((size - 2^k) / 2^(k - per_shift)),
                // which is ((size - 1) >> (k - per_shift)) - 2^per_shift + 1.
                let s = size - 1;
                let k = usize::BITS - 1 - s.leading_zeros();
                (((k - min_shift) as usize) << per_shift) + (s >> (k - per_shift)) + 1
                    - (1 << per_shift)
            }
            Shape::List => self.sizes.partition_point(|&c| c < size),
        };
        (index < self.sizes.len()).then_some(index)
    }

    /// The classes, smallest first.
    #[inline]
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// The number of classes.
    #[inline]
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    /// Always `false`: there is at least one class.
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The most a request can grow by rounding up to its class, as a
    /// factor: the largest ratio of one class to the one below it (1.25 for
    /// the default 4 per doubling). Requests at or below the smallest class
    /// can grow more, but by at most the smallest class's size.
    pub fn max_rounding(&self) -> f64 {
        self.sizes
            .windows(2)
            .map(|w| w[1] as f64 / w[0] as f64)
            .fold(1.0, f64::max)
    }

    /// The largest class; requests above it are served exactly and not
    /// pooled.
    #[inline]
    pub fn largest(&self) -> usize {
        self.sizes[self.sizes.len() - 1]
    }
}

/// The capacity of class `index` of a geometric shape.
fn geometric_size(shape: Shape, index: usize) -> usize {
    let Shape::Geometric {
        min_shift,
        per_shift,
    } = shape
    else {
        unreachable!("geometric_size of a list")
    };
    let k = min_shift as usize + (index >> per_shift);
    let j = index & ((1 << per_shift) - 1);
    (1 << k) + (j << (k - per_shift as usize))
}

impl Default for SizeClasses {
    /// Geometric, 4 KiB to 64 MiB, 4 classes per doubling (57 classes).
    fn default() -> Self {
        Self::geometric(4 << 10, 64 << 20, 4).expect("the default classes are valid")
    }
}

impl fmt::Debug for SizeClasses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SizeClasses")
            .field("shape", &self.shape)
            .field("count", &self.sizes.len())
            .field("smallest", &self.sizes[0])
            .field("largest", &self.largest())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_rounding_is_the_largest_step_between_classes() {
        assert_eq!(SizeClasses::default().max_rounding(), 1.25);
        assert_eq!(
            SizeClasses::from_sizes(&[100, 200, 300])
                .unwrap()
                .max_rounding(),
            2.0
        );
        assert_eq!(SizeClasses::from_sizes(&[100]).unwrap().max_rounding(), 1.0);
        assert_eq!(
            SizeClasses::powers_of_two(4096, 1 << 20)
                .unwrap()
                .max_rounding(),
            2.0
        );
    }

    #[test]
    fn list_rounds_up() {
        let c = SizeClasses::from_sizes(&[100, 200, 300]).unwrap();
        assert_eq!(c.class_for(0), Some(100));
        assert_eq!(c.class_for(1), Some(100));
        assert_eq!(c.class_for(100), Some(100));
        assert_eq!(c.class_for(101), Some(200));
        assert_eq!(c.class_for(150), Some(200));
        assert_eq!(c.class_for(300), Some(300));
        assert_eq!(c.class_for(301), None);
        assert_eq!(c.class_for(usize::MAX), None);
    }

    #[test]
    fn default_is_4k_to_64m_four_per_doubling() {
        let c = SizeClasses::default();
        assert_eq!(c.sizes()[0], 4096);
        assert_eq!(&c.sizes()[..6], &[4096, 5120, 6144, 7168, 8192, 10240]);
        assert_eq!(c.largest(), 64 << 20);
        assert_eq!(c.len(), 14 * 4 + 1);
    }

    #[test]
    fn geometric_lookup_matches_linear_search() {
        for (min, max, per) in [
            (4096, 64 << 20, 4),
            (1, 1 << 20, 1),
            (16, 1 << 16, 8),
            (64, 1000, 2),
        ] {
            let c = SizeClasses::geometric(min, max, per).unwrap();
            assert!(c.sizes().windows(2).all(|w| w[0] < w[1]));
            let mut probes = vec![0, 1, usize::MAX, MAX_CLASS_SIZE, MAX_CLASS_SIZE + 1];
            for &s in c.sizes() {
                probes.extend([s - 1, s, s + 1]);
            }
            for size in probes {
                let linear = c.sizes().iter().copied().find(|&s| s >= size);
                assert_eq!(c.class_for(size), linear, "size {size} in {c:?}");
            }
        }
    }

    #[test]
    fn geometric_waste_is_bounded() {
        let c = SizeClasses::default();
        for size in (4096..(1 << 20)).step_by(997) {
            let class = c.class_for(size).unwrap();
            assert!(class >= size);
            assert!((class - size) * 4 <= size, "size {size} got {class}");
        }
    }

    #[test]
    fn geometric_rounds_max_up_to_a_class() {
        let c = SizeClasses::geometric(64, 1000, 2).unwrap();
        assert_eq!(c.largest(), 1024);
    }

    #[test]
    fn powers_of_two() {
        let c = SizeClasses::powers_of_two(1024, 8192).unwrap();
        assert_eq!(c.sizes(), &[1024, 2048, 4096, 8192]);
        assert_eq!(c.class_for(3000), Some(4096));
        let err = SizeClasses::powers_of_two(1000, 8192).unwrap_err();
        assert!(
            err.to_string()
                .contains("powers_of_two: min must be a power of two"),
            "{err}"
        );
        assert!(SizeClasses::powers_of_two(1024, 1000).is_err());
    }

    #[test]
    fn invalid_specifications_say_why() {
        let cases: Vec<(Result<SizeClasses, Error>, &str)> = vec![
            (SizeClasses::from_sizes(&[]), "empty"),
            (SizeClasses::from_sizes(&[0]), "class 0 is zero"),
            (SizeClasses::from_sizes(&[200, 100]), "strictly increasing"),
            (SizeClasses::from_sizes(&[100, 100]), "strictly increasing"),
            (SizeClasses::from_sizes(&[usize::MAX]), "above the largest"),
            (
                SizeClasses::from_sizes(&vec![1; MAX_CLASSES + 1]),
                "at most",
            ),
            (
                SizeClasses::geometric(0, 10, 1),
                "min must be a power of two",
            ),
            (
                SizeClasses::geometric(100, 1000, 1),
                "min must be a power of two",
            ),
            (
                SizeClasses::geometric(64, 1000, 3),
                "per_doubling must be a power of two",
            ),
            (
                SizeClasses::geometric(64, 1000, 0),
                "per_doubling must be a power of two",
            ),
            (SizeClasses::geometric(4, 1000, 8), "may not exceed min"),
            (SizeClasses::geometric(64, 32, 1), "below min"),
            (
                SizeClasses::geometric(64, usize::MAX, 1),
                "above the largest",
            ),
            (
                SizeClasses::geometric(1024, MAX_CLASS_SIZE, 1024),
                "more than",
            ),
        ];
        for (result, needle) in cases {
            let err = result.expect_err(needle);
            assert!(matches!(err, Error::InvalidSizeClasses(_)));
            assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
        }
    }
}
