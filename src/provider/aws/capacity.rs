//! Launching into capacity the user bought ahead: an On-Demand Capacity Reservation or a
//! Capacity Block for ML, named per machine group (`aws.capacityReservation`). The request
//! shape is EC2's (RunInstances `CapacityReservationSpecification.CapacityReservationTarget.
//! CapacityReservationId`; a Capacity Block additionally `InstanceMarketOptions.MarketType =
//! capacity-block`, EC2 User Guide "Launch instances into a Capacity Block").

use aws_sdk_ec2::types::{
    CapacityReservationSpecification, CapacityReservationTarget, InstanceMarketOptionsRequest,
    MarketType,
};

use crate::profile::schema::CapacityReservation;

/// The launch's target reservation.
pub fn specification(c: &CapacityReservation) -> CapacityReservationSpecification {
    CapacityReservationSpecification::builder()
        .capacity_reservation_target(
            CapacityReservationTarget::builder()
                .capacity_reservation_id(&c.id)
                .build(),
        )
        .build()
}

/// The market a Capacity Block is launched in (none for an ordinary reservation).
pub fn market_options(c: &CapacityReservation) -> Option<InstanceMarketOptionsRequest> {
    c.capacity_block.then(|| {
        InstanceMarketOptionsRequest::builder()
            .market_type(MarketType::CapacityBlock)
            .build()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_and_reservation_shapes() {
        let r = CapacityReservation {
            id: "cr-0123456789abcdef0".into(),
            capacity_block: false,
        };
        let s = specification(&r);
        assert_eq!(
            s.capacity_reservation_target()
                .and_then(|t| t.capacity_reservation_id()),
            Some("cr-0123456789abcdef0")
        );
        assert!(market_options(&r).is_none());
        let b = CapacityReservation {
            capacity_block: true,
            ..r
        };
        assert_eq!(
            market_options(&b).and_then(|m| m.market_type().cloned()),
            Some(MarketType::CapacityBlock)
        );
    }
}
